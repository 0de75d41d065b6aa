//! Export to pprof's `profile.proto`, gzipped, through the shared encoder of
//! [`crate::pprof`] (prost types): what `go tool pprof`, Pyroscope, Parca and Grafana read.
//!
//! The mappings are the profile's executable file-backed ones, each with the GNU build ID of
//! its file as it is now (read with `object`, only the headers and the note; empty when the
//! file is gone or has none). Symbolized rows give each location its inlined frames (innermost
//! first, as `profile.proto` specifies) after [`super::resolve`] dropped the allocator's own
//! leading frames; unsymbolized output ([`encode_unsymbolized`]) gives bare addresses and marks
//! the mappings as having no functions, for the server to symbolize from the build IDs.
//! Return addresses are written as the call's address (`ret - 1`), as Go writes them.

use super::parse::Profile;
use super::ResolvedRow;
use crate::pprof::{self as pb, proto, Builder, Frame, Values};
use std::collections::HashMap;

/// The GNU build ID of the ELF file at `path`, lowercase hex; empty if unreadable or absent.
pub fn file_build_id(path: &str) -> String {
    use object::Object;
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let cache = object::ReadCache::new(file);
    match object::File::parse(&cache).map(|f| f.build_id()) {
        Ok(Ok(Some(id))) => pb::notes::hex(id),
        _ => String::new(),
    }
}

/// The profile's executable file-backed mappings, with build IDs.
fn mappings(profile: &Profile) -> Vec<pb::Mapping> {
    let mut ids: HashMap<&str, String> = HashMap::new();
    profile
        .mappings
        .iter()
        .filter(|m| m.is_file() && m.is_exec())
        .map(|m| pb::Mapping {
            start: m.start,
            limit: m.end,
            offset: m.offset,
            file: m.path.clone(),
            build_id: ids
                .entry(m.path.as_str())
                .or_insert_with(|| file_build_id(&m.path))
                .clone(),
        })
        .collect()
}

fn values(c: &super::parse::Counts) -> Values {
    Values {
        alloc_objects: c.alloc_objects,
        alloc_bytes: c.alloc_bytes,
        inuse_objects: c.live_objects,
        inuse_bytes: c.live_bytes,
    }
}

/// The address a location is written at: a return address as its call's.
fn call_address(address: u64, is_return: bool) -> u64 {
    if is_return {
        address.saturating_sub(1)
    } else {
        address
    }
}

/// The resolved (symbolized) profile as a `profile.proto` message.
pub fn encode(profile: &Profile, rows: &[ResolvedRow]) -> proto::Profile {
    encode_with_default(profile, rows, None)
}

/// As [`encode`], naming the sample type readers show by default (`default_sample_type`, e.g.
/// `alloc_space`; without one, pprof shows the last, `inuse_space`). An unknown name is left out.
pub fn encode_with_default(
    profile: &Profile,
    rows: &[ResolvedRow],
    default_sample_type: Option<&str>,
) -> proto::Profile {
    let all_return = profile.first_frame_is_return_address();
    let mut b = Builder::new(profile.sample_period, &mappings(profile), true);
    for row in rows {
        let ids = row
            .locations
            .iter()
            .enumerate()
            .map(|(i, loc)| {
                let frames: Vec<Frame> = loc
                    .frames
                    .iter()
                    .map(|f| Frame {
                        function: &f.function,
                        file: f.file.as_deref().unwrap_or(""),
                        line: f.line.map_or(0, i64::from),
                    })
                    .collect();
                b.location(call_address(loc.address, all_return || i > 0), &frames)
            })
            .collect();
        b.sample(ids, values(&row.counts));
    }
    if let Some(t) = default_sample_type {
        b.default_sample_type(t);
    }
    b.finish()
}

/// The profile with bare addresses, not symbolized: its mappings say they have no functions,
/// so that Pyroscope (debuginfod) or Parca symbolize it on the server from the build IDs.
/// Nothing is dropped from the stacks (sampalloc's own start at the allocation's caller).
pub fn encode_unsymbolized(profile: &Profile) -> proto::Profile {
    let all_return = profile.first_frame_is_return_address();
    let mut b = Builder::new(profile.sample_period, &mappings(profile), false);
    for row in &profile.rows {
        let ids = row
            .frames
            .iter()
            .enumerate()
            .map(|(i, &a)| b.location(call_address(a, all_return || i > 0), &[]))
            .collect();
        b.sample(ids, values(&row.counts));
    }
    b.finish()
}

/// Encodes and gzips.
pub fn encode_gzip(profile: &Profile, rows: &[ResolvedRow]) -> Result<Vec<u8>, String> {
    gzip(&encode(profile, rows))
}

/// [`encode_with_default`], gzipped.
pub fn encode_gzip_with_default(
    profile: &Profile,
    rows: &[ResolvedRow],
    default_sample_type: Option<&str>,
) -> Result<Vec<u8>, String> {
    gzip(&encode_with_default(profile, rows, default_sample_type))
}

/// A message, encoded and gzipped.
pub fn gzip(p: &proto::Profile) -> Result<Vec<u8>, String> {
    pb::gzip(p).map_err(|e| format!("cannot compress the pprof profile: {e}"))
}
