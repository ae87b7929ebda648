//! Replays the committed fuzz corpora on the stable toolchain: every file under
//! `fuzz/corpus/<target>/` goes through the same harness function as the libFuzzer target of
//! that name, so `cargo test` catches regressions without nightly or libFuzzer. Nightly jobs
//! explore with `cargo +nightly fuzz run`; see `fuzz/README.md`.

use std::path::{Path, PathBuf};

#[allow(
    unreachable_pub,
    reason = "the harness is shared with the fuzz crate, which exports it"
)]
#[path = "../../../fuzz/src/harness.rs"]
mod harness;

#[path = "../../../fuzz/src/replay.rs"]
mod replay;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

/// Runs every file of `target`'s corpus and names each one that panicked.
fn replay(target: &str) {
    replay::replay(harness::TARGETS, &corpus_root(), target);
}

#[test]
fn every_target_has_a_corpus() {
    replay::assert_every_target_has_a_corpus(harness::TARGETS, &corpus_root());
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
fn turn_stream() {
    replay("turn_stream");
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
fn quic_wire() {
    replay("quic_wire");
}

#[test]
fn mesh_client() {
    replay("mesh_client");
}
