//! Export to pprof's `profile.proto`, gzipped: what `go tool pprof`, Pyroscope, Parca and
//! Grafana read. A small hand-written protobuf encoder (the message is simple; no build-time
//! `protoc`).
//!
//! Sample types, in the order pprof expects for heap profiles: `alloc_objects/count`,
//! `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes`; `period_type` is
//! `space/bytes` and `period` the mean sample interval. Locations carry their inlined frames
//! (innermost first, as `profile.proto` specifies) and the mapping they fall in.

use super::parse::{Mapping, Profile};
use super::ResolvedRow;
use std::collections::HashMap;
use std::io::Write;

/// A protobuf message being written.
#[derive(Default)]
struct Msg(Vec<u8>);

impl Msg {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    /// An unsigned or signed varint field (proto3: zero is not written).
    fn int(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn uint(&mut self, field: u32, v: u64) {
        self.int(field, v as i64);
    }
    fn boolean(&mut self, field: u32, v: bool) {
        self.int(field, v as i64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn msg(&mut self, field: u32, m: Msg) {
        self.bytes(field, &m.0);
    }
    fn packed(&mut self, field: u32, vs: impl IntoIterator<Item = u64>) {
        let mut inner = Msg::default();
        for v in vs {
            inner.varint(v);
        }
        if !inner.0.is_empty() {
            self.bytes(field, &inner.0);
        }
    }
}

#[derive(Default)]
struct Strings {
    index: HashMap<String, i64>,
    list: Vec<String>,
}

impl Strings {
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as i64;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The sample types, in the order of each sample's values.
const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

fn value_type(strings: &mut Strings, ty: &str, unit: &str) -> Msg {
    let mut m = Msg::default();
    m.int(1, strings.id(ty));
    m.int(2, strings.id(unit));
    m
}

/// Encodes the resolved profile as an (uncompressed) `profile.proto` message.
pub fn encode(profile: &Profile, rows: &[ResolvedRow]) -> Vec<u8> {
    encode_with_default(profile, rows, None)
}

/// As [`encode`], naming the sample type readers show by default (`default_sample_type`, e.g.
/// `alloc_space`; without one, pprof shows the last, `inuse_space`). An unknown name is left out.
pub fn encode_with_default(
    profile: &Profile,
    rows: &[ResolvedRow],
    default_sample_type: Option<&str>,
) -> Vec<u8> {
    let mut strings = Strings::default();
    strings.id("");
    let mut out = Msg::default();
    for (t, u) in SAMPLE_TYPES {
        let vt = value_type(&mut strings, t, u);
        out.msg(1, vt);
    }

    // Mappings: the executable file-backed ones, ids from 1.
    let maps: Vec<&Mapping> = profile
        .mappings
        .iter()
        .filter(|m| m.is_file() && m.is_exec())
        .collect();
    let mapping_of = |addr: u64| -> u64 {
        maps.iter()
            .position(|m| m.start <= addr && addr < m.end)
            .map_or(0, |i| i as u64 + 1)
    };

    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_msgs: Vec<Msg> = Vec::new();
    let mut locations: HashMap<(u64, usize), u64> = HashMap::new();
    let mut location_msgs: Vec<Msg> = Vec::new();
    let mut samples: Vec<Msg> = Vec::new();

    for row in rows {
        let mut ids = Vec::with_capacity(row.locations.len());
        for loc in &row.locations {
            let key = (loc.address, loc.frames.len());
            let id = match locations.get(&key) {
                Some(&id) => id,
                None => {
                    let id = location_msgs.len() as u64 + 1;
                    let mut m = Msg::default();
                    m.uint(1, id);
                    m.uint(2, mapping_of(loc.address));
                    m.uint(3, loc.address);
                    for f in &loc.frames {
                        let fkey = (f.function.clone(), f.file.clone().unwrap_or_default());
                        let fid = match functions.get(&fkey) {
                            Some(&fid) => fid,
                            None => {
                                let fid = function_msgs.len() as u64 + 1;
                                let mut fm = Msg::default();
                                fm.uint(1, fid);
                                let name = strings.id(&f.function);
                                fm.int(2, name);
                                fm.int(3, name);
                                fm.int(4, strings.id(&fkey.1));
                                function_msgs.push(fm);
                                functions.insert(fkey, fid);
                                fid
                            }
                        };
                        let mut line = Msg::default();
                        line.uint(1, fid);
                        line.int(2, f.line.unwrap_or(0) as i64);
                        m.msg(4, line);
                    }
                    location_msgs.push(m);
                    locations.insert(key, id);
                    id
                }
            };
            ids.push(id);
        }
        let c = &row.counts;
        let values = [c.alloc_objects, c.alloc_bytes, c.live_objects, c.live_bytes]
            .map(|v| v.round() as i64 as u64);
        let mut s = Msg::default();
        s.packed(1, ids);
        s.packed(2, values);
        samples.push(s);
    }

    for s in samples {
        out.msg(2, s);
    }
    for (i, m) in maps.iter().enumerate() {
        let mut mm = Msg::default();
        mm.uint(1, i as u64 + 1);
        mm.uint(2, m.start);
        mm.uint(3, m.end);
        mm.uint(4, m.offset);
        mm.int(5, strings.id(&m.path));
        mm.boolean(7, true);
        mm.boolean(8, true);
        mm.boolean(9, true);
        mm.boolean(10, true);
        out.msg(3, mm);
    }
    for m in location_msgs {
        out.msg(4, m);
    }
    for m in function_msgs {
        out.msg(5, m);
    }
    let period_type = value_type(&mut strings, "space", "bytes");
    let default_type = default_sample_type
        .filter(|t| SAMPLE_TYPES.iter().any(|(n, _)| n == t))
        .map(|t| strings.id(t));
    for s in &strings.list {
        out.bytes(6, s.as_bytes());
    }
    out.msg(11, period_type);
    out.int(12, profile.sample_period as i64);
    if let Some(t) = default_type {
        out.int(14, t);
    }
    out.0
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

fn gzip(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw)
        .and_then(|_| gz.finish())
        .map_err(|e| format!("cannot compress the pprof profile: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut m = Msg::default();
        m.varint(300);
        assert_eq!(m.0, [0xac, 0x02]);
        let mut m = Msg::default();
        m.int(1, -1);
        assert_eq!(m.0.len(), 11);
    }
}
