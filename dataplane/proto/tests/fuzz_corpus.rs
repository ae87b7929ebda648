//! Replays the committed fuzz corpora on the stable toolchain: every file under
//! `fuzz/corpus/<target>/` goes through the same harness function as the libFuzzer target of
//! that name, so `cargo test` catches regressions without nightly or libFuzzer. Nightly jobs
//! explore with `cargo +nightly fuzz run`; see `fuzz/README.md`.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(
    unreachable_pub,
    reason = "the harness is shared with the fuzz crate, which exports it"
)]
#[path = "../../../fuzz/src/harness.rs"]
mod harness;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

/// The files of one target's corpus, sorted so failures are reproducible by name.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("corpus {} unreadable: {err}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `target`'s corpus and names each one that panicked.
fn replay(target: &str) {
    let run = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|&(_, run)| run)
        .expect("a known target");
    let files = corpus(target);
    assert!(!files.is_empty(), "corpus of {target} is empty");
    let mut failed = Vec::new();
    for path in &files {
        let data = fs::read(path).expect("a readable corpus file");
        if panic::catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus() {
    for (target, _) in harness::TARGETS {
        assert!(
            corpus_root().join(target).is_dir(),
            "no corpus for {target}"
        );
    }
}

#[test]
fn stun_parse() {
    replay("stun_parse");
}

#[test]
fn channel_data() {
    replay("channel_data");
}

#[test]
fn turn_server() {
    replay("turn_server");
}

#[test]
fn ws_frame() {
    replay("ws_frame");
}

#[test]
fn ws_handshake() {
    replay("ws_handshake");
}

#[test]
fn ws_session() {
    replay("ws_session");
}

#[test]
fn relay_message() {
    replay("relay_message");
}

#[test]
fn mesh_client() {
    replay("mesh_client");
}
