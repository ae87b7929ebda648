//! Replays the committed corpora of the channel's fuzz targets on the stable toolchain:
//! every file under `fuzz/corpus/<target>/` goes through the same harness function as the
//! libFuzzer target of that name (`fuzz/src/channel_harness.rs`), so `cargo test` catches
//! regressions without nightly. Exploring is `cargo +nightly fuzz run plane_codec` (or
//! `channel_ring`) in `fuzz/`; see `fuzz/README.md`.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(
    unreachable_pub,
    reason = "the harness is shared with the fuzz crate, which exports it"
)]
#[path = "../../fuzz/src/channel_harness.rs"]
mod harness;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
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

    let seeds: Vec<PathBuf> = corpus("plane_codec")
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
