//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`), so every input the fuzzers
//! ever found interesting, crashes included, stays a regression test on stable Rust; and runs
//! the same targets on random bytes.
#![cfg(feature = "fuzz")]

use std::path::Path;

use leasehold::fuzz;
use proptest::prelude::*;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn record_json_corpus() {
    replay("record_json", fuzz::record_json);
}

#[test]
fn lease_spec_corpus() {
    replay("lease_spec", fuzz::lease_spec);
}

#[test]
fn elector_inputs_corpus() {
    replay("elector_inputs", fuzz::elector_inputs);
}

#[test]
fn simulation_corpus() {
    replay("simulation", fuzz::simulation);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn elector_inputs_random(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz::elector_inputs(&data);
    }

    #[test]
    fn record_json_random(data in "\\PC{0,300}") {
        fuzz::record_json(data.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn simulation_random(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        fuzz::simulation(&data);
    }
}
