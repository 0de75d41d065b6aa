//! Heap profiles as pprof's `profile.proto`, gzipped: what `go tool pprof`, Pyroscope, Parca
//! and Grafana read (feature `pprof`, implied by `cli`).
//!
//! One encoder for both writers: the CLI (`sampalloc pprof`, `serve`), which symbolizes first,
//! and [`crate::profile::pprof`], which runs inside the profiled process and leaves addresses
//! for the server to symbolize. The messages are the prost types of [`proto`]; this module only
//! fills them: sample types as Go names them (`alloc_objects/count`, `alloc_space/bytes`,
//! `inuse_objects/count`, `inuse_space/bytes`, in that order; period type `space/bytes`, period
//! the mean sample interval), mappings with their file names and GNU build IDs (lowercase hex,
//! as Go and the symbolization servers write them), locations with their inlined frames
//! innermost first. A profile without frame names marks its mappings as having no functions,
//! file names, line numbers or inline frames, so that Pyroscope (through debuginfod) and Parca
//! symbolize it on the server from the build IDs.

pub mod notes;
#[allow(missing_docs, clippy::doc_lazy_continuation)]
pub mod proto;

use prost::Message;
use std::collections::HashMap;
use std::io::{self, Write};

/// The sample types, in the order of each sample's values.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// An executable segment of a loaded file: where it is, what file and which build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// Offset in the file of the first mapped byte.
    pub offset: u64,
    /// The file's path (or the loader's name for it, such as `linux-vdso.so.1`).
    pub file: String,
    /// Its GNU build ID (`NT_GNU_BUILD_ID`), lowercase hex; empty if it has none.
    pub build_id: String,
}

/// One (possibly inlined) function at a location.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// The function's name, demangled.
    pub function: &'a str,
    /// Its source file, or empty.
    pub file: &'a str,
    /// The source line, or 0.
    pub line: i64,
}

/// Estimated counts of one stack, in [`SAMPLE_TYPES`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Values {
    /// Objects allocated since the start.
    pub alloc_objects: f64,
    /// Bytes allocated since the start.
    pub alloc_bytes: f64,
    /// Objects still allocated.
    pub inuse_objects: f64,
    /// Bytes still allocated.
    pub inuse_bytes: f64,
}

/// Fills a [`proto::Profile`]: interns strings, functions and locations, assigns ids from 1.
pub struct Builder {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<(u64, usize), u64>,
    symbolized: bool,
}

impl Builder {
    /// A profile of a heap sampled every `period` bytes on average, over `mappings`. With
    /// `symbolized` false the mappings say they have no functions (the locations will have no
    /// frames), so that servers symbolize the addresses from the build IDs.
    pub fn new(period: u64, mappings: &[Mapping], symbolized: bool) -> Builder {
        let mut b = Builder {
            profile: proto::Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            locations: HashMap::new(),
            symbolized,
        };
        b.string("");
        for (t, u) in SAMPLE_TYPES {
            let vt = b.value_type(t, u);
            b.profile.sample_type.push(vt);
        }
        b.profile.period_type = Some(b.value_type("space", "bytes"));
        b.profile.period = period as i64;
        for (i, m) in mappings.iter().enumerate() {
            let mapping = proto::Mapping {
                id: i as u64 + 1,
                memory_start: m.start,
                memory_limit: m.limit,
                file_offset: m.offset,
                filename: b.string(&m.file),
                build_id: b.string(&m.build_id),
                has_functions: symbolized,
                has_filenames: symbolized,
                has_line_numbers: symbolized,
                has_inline_frames: symbolized,
            };
            b.profile.mapping.push(mapping);
        }
        b
    }

    /// The string table index of `s`.
    pub fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn value_type(&mut self, ty: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(ty),
            unit: self.string(unit),
        }
    }

    /// The mapping (id from 1) holding `address`, or 0.
    fn mapping_of(&self, address: u64) -> u64 {
        self.profile
            .mapping
            .iter()
            .find(|m| m.memory_start <= address && address < m.memory_limit)
            .map_or(0, |m| m.id)
    }

    /// The id of the location at `address` with `frames` (innermost first; none when not
    /// symbolized). A return address should be given as the call's address, `ret - 1`, as Go
    /// writes it, so that a server symbolizing it finds the call's line.
    pub fn location(&mut self, address: u64, frames: &[Frame]) -> u64 {
        let key = (address, frames.len());
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mut lines = Vec::with_capacity(frames.len());
        for f in frames {
            let name = self.string(f.function);
            let file = self.string(f.file);
            let function_id = match self.functions.get(&(name, file)) {
                Some(&id) => id,
                None => {
                    let id = self.profile.function.len() as u64 + 1;
                    self.profile.function.push(proto::Function {
                        id,
                        name,
                        system_name: name,
                        filename: file,
                        start_line: 0,
                    });
                    self.functions.insert((name, file), id);
                    id
                }
            };
            lines.push(proto::Line {
                function_id,
                line: f.line,
                column: 0,
            });
        }
        let id = self.profile.location.len() as u64 + 1;
        let mapping_id = self.mapping_of(address);
        self.profile.location.push(proto::Location {
            id,
            mapping_id,
            address,
            line: lines,
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// Adds a sample: the stack's location ids (innermost first) and its counts, rounded.
    pub fn sample(&mut self, location_ids: Vec<u64>, v: Values) {
        let value = [
            v.alloc_objects,
            v.alloc_bytes,
            v.inuse_objects,
            v.inuse_bytes,
        ]
        .map(|x| x.round() as i64)
        .to_vec();
        self.profile.sample.push(proto::Sample {
            location_id: location_ids,
            value,
            label: Vec::new(),
        });
    }

    /// The sample type readers show by default (e.g. `alloc_space`; without one, pprof shows
    /// the last, `inuse_space`). An unknown name is ignored.
    pub fn default_sample_type(&mut self, name: &str) {
        if SAMPLE_TYPES.iter().any(|(n, _)| *n == name) {
            self.profile.default_sample_type = self.string(name);
        }
    }

    /// When the profile was taken, in nanoseconds since the Unix epoch.
    pub fn time_nanos(&mut self, t: i64) {
        self.profile.time_nanos = t;
    }

    /// Whether locations were given frames.
    pub fn symbolized(&self) -> bool {
        self.symbolized
    }

    /// The message.
    pub fn finish(self) -> proto::Profile {
        self.profile
    }
}

/// The profile encoded and gzipped, as served at `/debug/pprof/heap`.
pub fn gzip(profile: &proto::Profile) -> io::Result<Vec<u8>> {
    let raw = profile.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 3 + 64),
        flate2::Compression::default(),
    );
    gz.write_all(&raw)?;
    gz.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_interns_and_decodes_back() {
        let maps = [Mapping {
            start: 0x1000,
            limit: 0x2000,
            offset: 0,
            file: "/bin/x".into(),
            build_id: "abcd".into(),
        }];
        let mut b = Builder::new(4096, &maps, false);
        let a = b.location(0x1010, &[]);
        let c = b.location(0x3000, &[]);
        assert_eq!(b.location(0x1010, &[]), a);
        b.sample(
            vec![a, c],
            Values {
                inuse_bytes: 10.4,
                ..Values::default()
            },
        );
        let p = b.finish();
        let back = proto::Profile::decode(p.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.location[0].mapping_id, 1);
        assert_eq!(back.location[1].mapping_id, 0);
        assert_eq!(back.sample[0].value, [0, 0, 0, 10]);
        let m = &back.mapping[0];
        assert!(!m.has_functions && !m.has_filenames);
        assert_eq!(back.string_table[m.build_id as usize], "abcd");
        assert_eq!(back.string_table[0], "");
    }
}
