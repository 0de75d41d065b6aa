//! Reading pprof output in the tests with the same prost types the encoder fills
//! (`sampalloc::pprof::proto`), decoded by `prost::Message::decode`: a wrong field number or
//! type in the encoder is then a decode error or a missing value here, and `go tool pprof`
//! checks the bytes independently.

use prost::Message;
use sampalloc::pprof::proto::{Mapping, Profile};
use std::io::Read;

/// Gunzips and decodes a profile.
pub fn decode(gz: &[u8]) -> Profile {
    assert_eq!(&gz[..2], [0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut raw)
        .expect("gzip");
    Profile::decode(raw.as_slice()).expect("a profile.proto message")
}

/// The string at `i` of the string table.
pub fn s(p: &Profile, i: i64) -> &str {
    &p.string_table[usize::try_from(i).expect("index")]
}

/// The sample types as (type, unit).
pub fn sample_types(p: &Profile) -> Vec<(String, String)> {
    p.sample_type
        .iter()
        .map(|t| (s(p, t.r#type).to_string(), s(p, t.unit).to_string()))
        .collect()
}

/// The sample types Go writes for heap profiles, in its order.
pub const GO_HEAP_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// Checks what every heap profile of ours has: Go's sample types and period type, an empty
/// first string, a value per type in each sample, and locations and mappings whose ids resolve.
pub fn check_shape(p: &Profile, period: i64) {
    assert_eq!(s(p, 0), "");
    assert_eq!(
        sample_types(p),
        GO_HEAP_TYPES
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec()
    );
    let pt = p.period_type.expect("period type");
    assert_eq!((s(p, pt.r#type), s(p, pt.unit)), ("space", "bytes"));
    assert_eq!(p.period, period);
    for sample in &p.sample {
        assert_eq!(sample.value.len(), 4, "{sample:?}");
        for id in &sample.location_id {
            assert!(p.location.iter().any(|l| l.id == *id), "location {id}");
        }
    }
    for l in &p.location {
        assert!(
            l.mapping_id == 0 || p.mapping.iter().any(|m| m.id == l.mapping_id),
            "{l:?}"
        );
        for line in &l.line {
            assert!(p.function.iter().any(|f| f.id == line.function_id));
        }
    }
}

/// The mapping holding `address`.
pub fn mapping_at(p: &Profile, address: u64) -> Option<&Mapping> {
    p.mapping
        .iter()
        .find(|m| m.memory_start <= address && address < m.memory_limit)
}

/// The names of the functions of every location of the samples, innermost first per stack.
pub fn function_names(p: &Profile) -> Vec<&str> {
    p.function.iter().map(|f| s(p, f.name)).collect()
}

/// Whether a function is sampalloc's own or a Rust allocation shim in front of it: the
/// engine, `SampAlloc`'s methods, the profiler, `__rust_alloc` and kin, the C entry points.
/// The profiler captures stacks from the caller of these, so none is ever in a stack.
pub fn is_sampalloc_function(n: &str) -> bool {
    let n = n.strip_prefix("__rustc::").unwrap_or(n);
    n.starts_with("sampalloc_core::")
        || n.starts_with("sampalloc::profile::")
        || n.starts_with("sampalloc::pprof::")
        || n.contains("sampalloc::SampAlloc")
        || n.starts_with("__rust_alloc")
        || n.starts_with("__rust_realloc")
        || n.starts_with("__rust_dealloc")
        || n.starts_with("__rg_")
        || n.starts_with("__rdl_")
        || ["malloc", "calloc", "realloc", "free"].contains(&n)
}

/// [`is_sampalloc_function`], or Rust's allocation code above it (`alloc::alloc`, `RawVec`'s
/// growth): what the CLI drops from the top of symbolized stacks.
pub fn is_allocator_function(n: &str) -> bool {
    is_sampalloc_function(n)
        || n.starts_with("alloc::alloc::")
        || n.starts_with("<alloc::alloc::")
        || n.starts_with("alloc::raw_vec::")
        || n.starts_with("<alloc::raw_vec::")
}
