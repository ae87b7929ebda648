//! The only `unsafe` in the crate: viewing a shared mapping as `[AtomicU64]`, creating a
//! memfd, and the open-file-description locks that say which side is attached.
//!
//! Every byte of the segment is accessed through an `AtomicU64`, including message payloads
//! (copied word by word with relaxed loads and stores, which compile to plain moves). So no
//! access is a data race in Rust's memory model, whatever the other process does: a buggy or
//! hostile peer can make us read garbage (which the ring and codec reject), never cause
//! undefined behaviour. The protocols on top (ring, seqlock) are ordinary safe code.

use crate::sync::AtomicU64;

/// Bytes per word: every offset in the segment is a multiple of this.
pub(crate) const WORD: usize = 8;

#[cfg(not(loom))]
pub(crate) use mapped::{Mem, memfd};

#[cfg(not(loom))]
mod mapped {
    use std::ffi::CStr;
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};

    use memmap2::{MmapOptions, MmapRaw};

    use super::{AtomicU64, WORD};

    // An `AtomicU64` in shared memory is only shared between processes if it is a plain
    // 8-byte word operated on by lock-free instructions.
    const _: () = assert!(size_of::<AtomicU64>() == WORD && align_of::<AtomicU64>() == WORD);
    #[cfg(not(target_has_atomic = "64"))]
    compile_error!("boson-channel needs lock-free 64-bit atomics");

    /// A shared mapping of a whole file (memfd or a file under `/dev/shm`), seen as words.
    pub(crate) struct Mem {
        map: MmapRaw,
        file: File,
    }

    impl Mem {
        /// Maps the first `len` bytes of `file`, shared and writable. `len` must be a non-zero
        /// multiple of the word size and at most the file's length.
        pub(crate) fn map(file: File, len: usize) -> io::Result<Self> {
            Self::map_with(file, len, false)
        }

        /// [`Mem::map`], with every page allocated and mapped now (`MAP_POPULATE`), so the
        /// memory is paid for at start and the resident size does not creep up as traffic
        /// first reaches each page.
        pub(crate) fn map_populated(file: File, len: usize) -> io::Result<Self> {
            Self::map_with(file, len, true)
        }

        fn map_with(file: File, len: usize, populate: bool) -> io::Result<Self> {
            if len == 0 || !len.is_multiple_of(WORD) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "mapping length is not a non-zero multiple of 8",
                ));
            }
            let file_len = file.metadata()?.len();
            if u64::try_from(len).map_or(true, |len| len > file_len) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "mapping would extend past the end of the file",
                ));
            }
            let mut options = MmapOptions::new();
            options.len(len);
            if populate {
                options.populate();
            }
            let map = options.map_raw(&file)?;
            Ok(Self { map, file })
        }

        /// How many of the mapping's pages are resident now (mincore), and how many it has.
        #[cfg(test)]
        pub(crate) fn resident_pages(&self) -> io::Result<(usize, usize)> {
            // SAFETY: sysconf has no preconditions.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
                .map_err(|_| io::Error::last_os_error())?;
            let mut vec = vec![0u8; self.map.len().div_ceil(page)];
            // SAFETY: the mapping is live and page-aligned for `map.len()` bytes, and `vec`
            // has one byte per page of it, as mincore requires.
            let rc = unsafe {
                libc::mincore(
                    self.map.as_mut_ptr().cast(),
                    self.map.len(),
                    vec.as_mut_ptr(),
                )
            };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok((vec.iter().filter(|&&b| b & 1 == 1).count(), vec.len()))
        }

        /// The whole mapping as words.
        pub(crate) fn words(&self) -> &[AtomicU64] {
            // SAFETY: `map` is a live MAP_SHARED read-write mapping of `map.len()` bytes
            // (checked non-zero and a multiple of 8 in `map`), page-aligned by mmap and so
            // aligned for `AtomicU64`, which has the size and alignment of `u64` (asserted
            // above). It stays mapped for the lifetime of `self`, which bounds the slice.
            // Every access through the slice is atomic, so concurrent writes by this or
            // another process are not data races. The file must not be truncated while
            // mapped (that would fault, not corrupt): the crate never truncates an attached
            // segment, and the crate doc tells operators the same.
            unsafe {
                std::slice::from_raw_parts(
                    self.map.as_ptr().cast::<AtomicU64>(),
                    self.map.len() / WORD,
                )
            }
        }

        /// Takes the write lock on byte `byte` of the file for this open file description
        /// without waiting. `Ok(false)`: another open file description holds it.
        pub(crate) fn try_lock(&self, byte: i64) -> io::Result<bool> {
            match self.fcntl_lock(libc::F_OFD_SETLK, libc::F_WRLCK, byte) {
                Ok(_) => Ok(true),
                Err(err) if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                    Ok(false)
                }
                Err(err) => Err(err),
            }
        }

        /// Releases the lock on `byte` taken by [`Mem::try_lock`].
        pub(crate) fn unlock(&self, byte: i64) -> io::Result<()> {
            self.fcntl_lock(libc::F_OFD_SETLK, libc::F_UNLCK, byte)?;
            Ok(())
        }

        /// Whether another open file description (another attach, usually in another
        /// process) holds the lock on `byte`. The kernel drops a dead process's locks, so
        /// this is exact where a stored pid could be stale or reused.
        pub(crate) fn is_locked_elsewhere(&self, byte: i64) -> io::Result<bool> {
            let found = self.fcntl_lock(libc::F_OFD_GETLK, libc::F_WRLCK, byte)?;
            Ok(i32::from(found.l_type) != libc::F_UNLCK)
        }

        fn fcntl_lock(
            &self,
            cmd: libc::c_int,
            kind: libc::c_int,
            byte: i64,
        ) -> io::Result<libc::flock> {
            // SAFETY: `flock` is a plain C struct of integers (plus padding on some targets),
            // for which all-zero bytes are a valid value; zero is also what OFD locks require
            // of `l_pid`.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = i16::try_from(kind).map_err(io::Error::other)?;
            lock.l_whence = i16::try_from(libc::SEEK_SET).map_err(io::Error::other)?;
            lock.l_start = byte;
            lock.l_len = 1;
            // SAFETY: the descriptor is open for as long as `self.file` lives, and `lock` is a
            // valid, writable `flock` that F_OFD_SETLK reads and F_OFD_GETLK overwrites; the
            // kernel keeps no reference to it after the call.
            let rc = unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &raw mut lock) };
            if rc == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(lock)
        }
    }

    /// An anonymous, close-on-exec memory file for a segment that lives in one process.
    pub(crate) fn memfd(name: &CStr) -> io::Result<File> {
        // SAFETY: `name` is a NUL-terminated string that outlives the call, and the flags are
        // a valid combination.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create, so it is open and owned by nobody
        // else; the `File` takes ownership and closes it on drop.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// Under loom: plain heap words, so the model checker tracks every access.
#[cfg(loom)]
pub(crate) struct Mem {
    words: Box<[AtomicU64]>,
}

#[cfg(loom)]
impl Mem {
    /// `len` zeroed bytes (a multiple of the word size).
    pub(crate) fn zeroed(len: usize) -> Self {
        Self {
            words: (0..len / WORD).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The whole memory as words.
    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
    }
}
