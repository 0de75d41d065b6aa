//! Profiles from other writers parse into the same model: jemalloc's threaded `heap_v2/R`
//! layout, gperftools' unsampled `heapprofile`, and the older `heap/R` format (Go's legacy
//! heap profile, with `#` comment lines). Fixtures are in `tests/data/`.

use sampalloc::analysis::parse::{self, Format};
use std::path::Path;
use std::process::Command;

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn jemalloc_threaded_format() {
    let p = parse::read(&data("jemalloc.heap")).unwrap();
    assert_eq!(p.format, Format::JemallocV2);
    assert_eq!(p.sample_period, 524288);
    assert_eq!(p.rows.len(), 2, "the header's t* line is not a row");
    assert_eq!(
        p.rows[0].frames,
        vec![0x7f8a3d8f7b8d, 0x7f8a3d8e2ea5, 0x400e34]
    );
    let r = 524288.0f64;
    let s0 = 1.0 / (1.0 - (-(6688.0 / 13.0) / r).exp());
    assert!(close(p.rows[0].counts.live_bytes, 6688.0 * s0));
    assert!(close(p.rows[0].counts.live_objects, 13.0 * s0));
    let s1 = 1.0 / (1.0 - (-2.0f64).exp());
    assert!(close(p.rows[1].counts.live_bytes, 1048576.0 * s1));
    assert_eq!(p.rows[1].counts.alloc_bytes, 0.0);
    assert_eq!(p.mappings.len(), 2);
    assert_eq!(p.mappings[1].path, "/nonexistent/lib/libjemalloc.so.2");
    assert!(!p.first_frame_is_return_address());
}

#[test]
fn gperftools_unsampled_format() {
    let p = parse::read(&data("gperftools_heapprofile.heap")).unwrap();
    assert_eq!(p.format, Format::Unsampled);
    assert_eq!(p.sample_period, 0);
    let t = p.total();
    assert_eq!((t.live_objects, t.live_bytes), (3.0, 300.0));
    assert_eq!((t.alloc_objects, t.alloc_bytes), (10.0, 1000.0));
    assert_eq!(p.rows[0].frames, vec![0x400a10, 0x400b20]);
}

#[test]
fn legacy_heap_format_with_comments() {
    let p = parse::read(&data("go_heap_v1.heap")).unwrap();
    assert_eq!(p.format, Format::HeapV1);
    assert_eq!(
        p.sample_period, 524288,
        "the header holds twice the interval"
    );
    assert_eq!(p.rows.len(), 1);
    let s = 1.0 / (1.0 - (-2.0f64).exp());
    assert!(close(p.rows[0].counts.live_bytes, 1048576.0 * s));
    assert!(p.mappings.is_empty());
}

#[test]
fn cli_reads_foreign_formats_and_warns_about_missing_files() {
    let o = Command::new(env!("CARGO_BIN_EXE_sampalloc"))
        .args(["top", "--stacks"])
        .arg(data("jemalloc.heap"))
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: cannot open /nonexistent/bin/app"),
        "{err}"
    );
    // The leading frame in libjemalloc is the allocator's own: dropped.
    assert!(
        out.contains("0x400e34") && out.contains("0x400f00"),
        "{out}"
    );
    assert!(
        !out.lines().skip(3).any(|l| l.contains("libjemalloc")),
        "{out}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_sampalloc"))
        .arg("top")
        .arg(data("gperftools_heapprofile.heap"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Total live: 300 B in 3 objects"), "{out}");
    assert!(out.contains("unsampled"), "{out}");
}
