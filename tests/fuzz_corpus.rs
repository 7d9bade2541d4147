//! The committed fuzz corpus (fuzz/corpus/<target>/: seeds from the other tests' inputs, what
//! the campaign kept, and every crash it found) replayed through the fuzz targets' checks on
//! stable, so CI holds every invariant and every fixed crash without nightly or cargo-fuzz.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn names(dir: &Path, strip: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().trim_end_matches(strip).to_string())
        .collect()
}

#[test]
fn every_target_has_its_check_and_a_corpus() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let targets: BTreeSet<String> = checks::TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    assert_eq!(names(&fuzz.join("fuzz_targets"), ".rs"), targets, "fuzz_targets/*.rs and checks::TARGETS");
    assert_eq!(names(&fuzz.join("corpus"), ""), targets, "fuzz/corpus/* and checks::TARGETS");
}

#[test]
fn the_corpus_replays_through_every_check() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut failed: Vec<(PathBuf, String)> = Vec::new();
    for (target, check) in checks::TARGETS {
        let dir = corpus.join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target} has no corpus");
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                failed.push((f, why.unwrap_or_default()));
            }
        }
        eprintln!("{target}: replayed");
    }
    assert!(failed.is_empty(), "{} corpus files fail their check: {failed:#?}", failed.len());
}
