//! Replays the committed corpora of the channel's fuzz targets on the stable toolchain:
//! every file under `fuzz/corpus/<target>/` goes through the same harness function as the
//! libFuzzer target of that name (`fuzz/src/channel_harness.rs`), so `cargo test` catches
//! regressions without nightly. Exploring is `cargo +nightly fuzz run plane_codec` (or
//! `channel_ring`) in `fuzz/`; see `fuzz/README.md`.

use std::fs;
use std::path::{Path, PathBuf};

#[allow(
    unreachable_pub,
    reason = "the harness is shared with the fuzz crate, which exports it"
)]
#[path = "../../fuzz/src/channel_harness.rs"]
mod harness;

#[path = "../../fuzz/src/replay.rs"]
mod replay;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
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
fn plane_codec() {
    replay("plane_codec");
}

#[test]
fn channel_ring() {
    replay("channel_ring");
}

/// The hand-made seeds (`fuzz/seeds/make_seeds.py`, written from the codec's doc table, not
/// from this code) all decode: a second implementation of the wire format agrees.
#[test]
fn plane_codec_seeds_are_valid_messages() {
    use boson_channel::codec::{decode_command, decode_event};

    let seeds: Vec<PathBuf> = replay::corpus(&corpus_root(), "plane_codec")
        .into_iter()
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("seed-"))
        })
        .collect();
    assert!(seeds.len() >= 12, "every command and event has a seed");
    for path in seeds {
        let data = fs::read(&path).expect("a readable seed");
        let (selector, message) = data.split_first().expect("not empty");
        let decoded = if selector % 2 == 0 {
            decode_command(message).map(|command| format!("{command:?}"))
        } else {
            decode_event(message).map(|event| format!("{event:?}"))
        };
        assert!(decoded.is_ok(), "{}: {decoded:?}", path.display());
    }
}
