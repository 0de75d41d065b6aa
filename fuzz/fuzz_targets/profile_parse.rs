//! Fuzzes the heap profile parser (`sampalloc::analysis::parse::parse`): any bytes must give a
//! profile or an error with a line number, never a panic or a hang.
//!
//! `cargo +nightly fuzz run profile_parse` (from the repository root).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sampalloc::analysis::parse;

fuzz_target!(|data: &[u8]| {
    match parse::parse(data) {
        Ok(p) => {
            // Totals of scaled rows are finite and not negative.
            let t = p.total();
            assert!(t.live_bytes >= 0.0 && !t.live_bytes.is_nan());
        }
        Err(e) => assert!(e.line >= 1),
    }
});
