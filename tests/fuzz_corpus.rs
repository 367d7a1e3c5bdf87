//! Replays the committed fuzz corpora through the same checks the fuzz targets run, so every
//! input a fuzzer ever kept stays a regression test in `cargo test`.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    n
}

#[test]
fn decode_frame_corpus() {
    assert!(replay("decode_frame", afterlog::testing::check_decode) > 10);
}

#[test]
fn recover_segment_corpus() {
    assert!(replay("recover_segment", afterlog::testing::check_recover) > 10);
}

#[test]
fn parse_after_corpus() {
    assert!(replay("parse_after", afterlog::testing::check_after) > 10);
}
