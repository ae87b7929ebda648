//! `docs/SECURITY.md` maps each threat to the tests that cover it; this keeps the map honest:
//! every test it names exists, and every file it names is there.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every `.rs` file of the workspace's crates (not `target/`).
fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The `code` spans of `text`.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

#[test]
fn every_test_the_threat_table_names_exists() {
    let doc = std::fs::read_to_string(root().join("docs/SECURITY.md")).unwrap();
    let table = doc
        .split("## Threats and the tests that cover them")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the threat table section");
    let mut files = Vec::new();
    sources(&root(), &mut files);
    let mut named = 0;
    for span in code_spans(table) {
        if span.ends_with(".rs") && span.contains('/') {
            assert!(root().join(span).exists(), "{span} does not exist");
        } else if !span.is_empty()
            && span
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            named += 1;
            let needle = format!("fn {span}(");
            assert!(
                files.iter().any(|file| file.contains(&needle)),
                "docs/SECURITY.md names `{span}`, but no function has that name"
            );
        }
    }
    assert!(
        named >= 50,
        "only {named} tests named: is the table still there?"
    );
}
