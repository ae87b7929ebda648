//! Replays the committed corpora on the stable toolchain. Not part of the fuzz crate: the
//! crates' `tests/fuzz_corpus.rs` include it with `#[path]`, next to their harness, so every
//! crate replays its corpora the same way.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A named harness entry, as in the harnesses' `TARGETS`.
pub(crate) type Targets<'a> = &'a [(&'a str, fn(&[u8]))];

/// The files of one target's corpus under `root`, sorted so failures are reproducible by name.
pub(crate) fn corpus(root: &Path, target: &str) -> Vec<PathBuf> {
    let dir = root.join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("corpus {} unreadable: {err}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file of `target`'s corpus through its entry in `targets` and names each one
/// that panicked.
pub(crate) fn replay(targets: Targets<'_>, root: &Path, target: &str) {
    let run = targets
        .iter()
        .find(|(name, _)| *name == target)
        .map(|&(_, run)| run)
        .expect("a known target");
    let files = corpus(root, target);
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

/// Every target in `targets` has a corpus directory under `root`.
pub(crate) fn assert_every_target_has_a_corpus(targets: Targets<'_>, root: &Path) {
    for (target, _) in targets {
        assert!(root.join(target).is_dir(), "no corpus for {target}");
    }
}
