//! The relay's own epoll set: the TCP listener and every connection of one worker. The worker
//! watches its fd through [`Io::watch_aux`](crate::io::Io::watch_aux), so one blocking wait
//! covers the UDP sockets (io_uring or epoll) and these TCP sockets.
//!
//! Level-triggered: a socket the relay did not drain within its budget is reported again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Readiness of one registered fd.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// Error or hang-up: read to learn which (a read returns 0 or the error).
    pub(crate) hangup: bool,
}

pub(crate) struct Poller {
    epfd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    pub(crate) fn new(capacity: usize) -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: a fresh fd nothing else owns.
            epfd: unsafe { OwnedFd::from_raw_fd(fd) },
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity],
        })
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let mut events = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
        if writable {
            events |= libc::EPOLLOUT as u32;
        }
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: plain syscall on live fds; the event is read during the call only.
        if unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &raw mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, false)
    }

    /// Changes whether `fd` is also watched for writability.
    pub(crate) fn set_writable(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, writable)
    }

    pub(crate) fn remove(&self, fd: RawFd) {
        // Closing the fd removes it too; this keeps a dup'd fd from lingering.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false);
    }

    /// Non-blocking: the fds ready now, at most the capacity given to [`new`](Self::new).
    pub(crate) fn poll(&mut self, out: &mut Vec<Ready>) -> io::Result<()> {
        out.clear();
        // SAFETY: the event buffer is live and its length is passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                i32::try_from(self.events.len()).unwrap_or(i32::MAX),
                0,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                return Ok(());
            }
            return Err(err);
        };
        out.extend(self.events[..n].iter().map(|event| {
            let bits = event.events;
            Ready {
                token: event.u64,
                readable: bits & (libc::EPOLLIN as u32) != 0,
                writable: bits & (libc::EPOLLOUT as u32) != 0,
                hangup: bits & ((libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32) != 0,
            }
        }));
        Ok(())
    }
}
