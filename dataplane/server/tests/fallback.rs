//! `IoBackend::Auto` under a seccomp profile that blocks io_uring, as Docker's default does:
//! it falls back to epoll with exactly one warning, and forcing io_uring fails.
//!
//! The filter cannot be lifted once installed, so the test re-runs itself as a child process
//! and installs it there.

#![allow(
    clippy::unwrap_used,
    reason = "helpers outside #[test] fns, which `allow-unwrap-in-tests` does not reach; a panic is a test failure"
)]

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};

use boson_dataplane::{IoBackend, start};
use boson_dataplane_proto::{BindingConfig, StunServer};
use common::{bind, client, config};

const CHILD_ENV: &str = "BOSON_DATAPLANE_SECCOMP_CHILD";
const TEST_NAME: &str = "auto_falls_back_to_epoll_when_seccomp_blocks_io_uring";

#[test]
fn auto_falls_back_to_epoll_when_seccomp_blocks_io_uring() {
    if std::env::var_os(CHILD_ENV).is_none() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "child failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.contains("1 passed"),
            "the child ran the test:\n{stdout}"
        );
        return;
    }

    let logs = Logs::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    )
    .unwrap();
    block_io_uring_setup();

    let err = start(config(IoBackend::Uring, 1), stun_core).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(
        logs.warnings(),
        0,
        "forcing io_uring errors instead of warning"
    );

    let dataplane = start(config(IoBackend::Auto, 2), stun_core).unwrap();
    assert_eq!(dataplane.backend(), IoBackend::Epoll);
    let socket = client();
    assert_eq!(
        bind(&socket, dataplane.local_addr(), [5; 12]),
        socket.local_addr().unwrap()
    );
    dataplane.shutdown().unwrap();

    let text = logs.text();
    eprint!("{text}");
    assert_eq!(logs.warnings(), 1, "exactly one warning:\n{text}");
    assert!(
        text.contains("io_uring unavailable, falling back to epoll")
            && text.contains("Operation not permitted")
            && text.contains("seccomp"),
        "{text}"
    );
}

fn stun_core(_: boson_dataplane::WorkerInfo) -> StunServer {
    StunServer::new(BindingConfig::default())
}

/// Makes `io_uring_setup` fail with EPERM for this thread and the threads it spawns.
fn block_io_uring_setup() {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
    const RET_ALLOW: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
    let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut filter = [
        insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(JEQ_K, 0, 1, libc::SYS_io_uring_setup as u32),
        insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        insn(RET_K, 0, 0, RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; the program is read during the call only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const program
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Log lines captured from every thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn warnings(&self) -> usize {
        self.text().lines().filter(|l| l.contains(" WARN ")).count()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}
