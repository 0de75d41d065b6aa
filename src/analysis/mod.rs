//! Heap profile analysis, the library behind the `sampalloc` command (feature `cli`).
//!
//! The pipeline: [`parse`] reads a profile into rows of scaled counts with raw addresses;
//! [`symbolize`] turns addresses into (inlined) frames; [`resolve`] does that for every row
//! and drops the allocator's own leading frames; [`sites`] aggregates rows by leaf function,
//! source line or whole stack; [`report`], [`flamegraph`] and [`pprof`] write the results;
//! [`trend`] follows sites over a series of profiles of one run; [`peek`] reads the contents of
//! sampled blocks that `prof_peek` kept beside a profile; [`window`] turns a process's cumulative
//! allocation counts into those of one window between two dumps (for `sampalloc push`).
//!
//! ```no_run
//! use sampalloc::analysis::{self, parse, symbolize::Symbolizer, GroupBy};
//! let profile = parse::read("app.1234.0.f.heap".as_ref()).unwrap();
//! let mut sym = Symbolizer::new(&profile, None);
//! let rows = analysis::resolve(&profile, &mut sym);
//! for site in analysis::sites(&rows, GroupBy::Function).iter().take(5) {
//!     println!("{:>12.0} {}", site.counts.live_bytes, site.function);
//! }
//! ```

pub mod explain;
pub mod flamegraph;
pub mod parse;
pub mod peek;
pub mod pprof;
pub mod report;
pub mod symbolize;
pub mod trend;
pub mod window;

use parse::{Counts, Profile};
use std::collections::HashMap;
use symbolize::{SymFrame, Symbolizer};

/// One address of a stack with its frames, innermost (inlined) first.
#[derive(Clone, Debug)]
pub struct ResolvedLoc {
    /// The address as written in the profile.
    pub address: u64,
    /// Its frames, innermost first (after allocator frames were dropped, for the first one).
    pub frames: Vec<SymFrame>,
}

/// A profile row with its stack symbolized.
#[derive(Clone, Debug)]
pub struct ResolvedRow {
    /// Scaled counts.
    pub counts: Counts,
    /// The stack, innermost first.
    pub locations: Vec<ResolvedLoc>,
}

impl ResolvedRow {
    /// All frames, innermost first.
    pub fn frames(&self) -> impl Iterator<Item = &SymFrame> {
        self.locations.iter().flat_map(|l| l.frames.iter())
    }
}

/// Whether a frame belongs to an allocator rather than to the program: frames in
/// `libsampalloc.so` (or jemalloc, tcmalloc), the Rust allocation shims, `alloc::alloc::*`,
/// `alloc::raw_vec::*` and `SampAlloc`'s `GlobalAlloc` methods.
pub fn is_allocator_frame(f: &SymFrame) -> bool {
    if let Some(m) = &f.module {
        if m.starts_with("libsampalloc.so")
            || m.starts_with("libjemalloc.so")
            || m.starts_with("libtcmalloc")
        {
            return true;
        }
    }
    let n = f.function.as_str();
    let n = n.strip_prefix("__rustc::").unwrap_or(n);
    matches!(
        n,
        "__rust_alloc"
            | "__rust_alloc_zeroed"
            | "__rust_realloc"
            | "__rust_dealloc"
            | "__rg_alloc"
            | "__rg_alloc_zeroed"
            | "__rg_realloc"
            | "__rg_dealloc"
    ) || n.starts_with("__rdl_")
        || n.starts_with("alloc::alloc::")
        // `<alloc::alloc::Global as core::alloc::Allocator>::allocate`, and the inherent
        // `<alloc::alloc::Global>::alloc_impl` that newer std inlines first into a location.
        || n.starts_with("<alloc::alloc::")
        || n.starts_with("<sampalloc::SampAlloc as core::alloc::global::GlobalAlloc>::")
        || n.starts_with("alloc::raw_vec::")
        || n.starts_with("<alloc::raw_vec::")
        || n.starts_with("sampalloc_core::")
}

/// Symbolizes every row of `profile` and drops its leading allocator frames (a stack made of
/// nothing else is kept whole).
pub fn resolve(profile: &Profile, sym: &mut Symbolizer) -> Vec<ResolvedRow> {
    let all_return = profile.first_frame_is_return_address();
    profile
        .rows
        .iter()
        .map(|row| ResolvedRow {
            counts: row.counts,
            locations: resolve_stack(&row.frames, all_return, sym),
        })
        .collect()
}

/// Symbolizes one stack of raw addresses (innermost first) as [`resolve`] does a row's: the
/// first address is a return address too if `all_return` (see
/// [`Profile::first_frame_is_return_address`]); leading allocator frames are dropped.
pub fn resolve_stack(frames: &[u64], all_return: bool, sym: &mut Symbolizer) -> Vec<ResolvedLoc> {
    let locations: Vec<ResolvedLoc> = frames
        .iter()
        .enumerate()
        .map(|(i, &a)| ResolvedLoc {
            address: a,
            frames: sym.symbolize(a, all_return || i > 0).to_vec(),
        })
        .collect();
    drop_allocator_frames(locations)
}

fn drop_allocator_frames(mut locs: Vec<ResolvedLoc>) -> Vec<ResolvedLoc> {
    let original = locs.clone();
    while let Some(first) = locs.first_mut() {
        let keep_from = first
            .frames
            .iter()
            .position(|f| !is_allocator_frame(f))
            .unwrap_or(first.frames.len());
        if keep_from < first.frames.len() {
            first.frames.drain(..keep_from);
            return locs;
        }
        locs.remove(0);
    }
    original
}

/// How rows are aggregated into sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// By the leaf function (and its module).
    Function,
    /// By the leaf function and its source line.
    Line,
    /// By the whole symbolized stack.
    Stack,
}

/// An aggregated call site.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Site {
    /// What identifies the site.
    pub key: String,
    /// Leaf function (demangled, or `0x…`).
    pub function: String,
    /// `file:line` of the leaf frame (for a function, of its largest contributor).
    pub location: String,
    /// Module file name of the leaf frame.
    pub module: String,
    /// For [`GroupBy::Stack`]: the frames, leaf first, as `function (file:line)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// The estimates.
    #[serde(flatten)]
    pub counts: Counts,
}

#[cfg(test)]
impl Site {
    /// A site for tests: function `f` (also its key) holding `live` bytes in blocks of 16.
    pub(crate) fn for_test(f: &str, live: f64) -> Site {
        Site {
            key: f.to_string(),
            function: f.to_string(),
            location: String::new(),
            module: String::new(),
            stack: Vec::new(),
            counts: Counts {
                live_bytes: live,
                live_objects: live / 16.0,
                ..Counts::default()
            },
        }
    }
}

impl serde::Serialize for Counts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Counts", 4)?;
        st.serialize_field("live_bytes", &self.live_bytes.round())?;
        st.serialize_field("live_objects", &self.live_objects.round())?;
        st.serialize_field("alloc_bytes", &self.alloc_bytes.round())?;
        st.serialize_field("alloc_objects", &self.alloc_objects.round())?;
        st.end()
    }
}

fn describe(f: &SymFrame) -> String {
    let loc = f.location();
    if loc.is_empty() {
        f.function.clone()
    } else {
        format!("{} ({loc})", f.function)
    }
}

/// The key of the site `row` belongs to when grouped `by` ([`Site::key`]), and for
/// [`GroupBy::Stack`] its frames.
fn key_of(row: &ResolvedRow, by: GroupBy) -> (String, Vec<String>) {
    let leaf = row.frames().next();
    let function = leaf.map_or_else(|| "[no stack]".to_string(), |f| f.function.clone());
    let location = leaf.map(SymFrame::location).unwrap_or_default();
    let module = leaf.and_then(|f| f.module.clone()).unwrap_or_default();
    match by {
        GroupBy::Function => (format!("{function}\u{0}{module}"), Vec::new()),
        GroupBy::Line => (
            format!("{function}\u{0}{location}\u{0}{module}"),
            Vec::new(),
        ),
        GroupBy::Stack => {
            let stack: Vec<String> = row.frames().map(describe).collect();
            (stack.join("\u{0}"), stack)
        }
    }
}

/// The key of the site that the stack `locations` belongs to when grouped `by` (the
/// [`Site::key`] that [`sites`] gives it).
pub fn site_key(locations: &[ResolvedLoc], by: GroupBy) -> String {
    let row = ResolvedRow {
        counts: Counts::default(),
        locations: locations.to_vec(),
    };
    key_of(&row, by).0
}

/// Aggregates resolved rows into sites, largest live bytes first.
pub fn sites(rows: &[ResolvedRow], by: GroupBy) -> Vec<Site> {
    let mut map: HashMap<String, (Site, f64)> = HashMap::new();
    for row in rows {
        let leaf = row.frames().next();
        let function = leaf.map_or_else(|| "[no stack]".to_string(), |f| f.function.clone());
        let location = leaf.map(SymFrame::location).unwrap_or_default();
        let module = leaf.and_then(|f| f.module.clone()).unwrap_or_default();
        let (key, stack) = key_of(row, by);
        let weight = row.counts.live_bytes.max(row.counts.alloc_bytes * 1e-9);
        let e = map.entry(key.clone()).or_insert_with(|| {
            (
                Site {
                    key,
                    function,
                    location: location.clone(),
                    module,
                    stack,
                    counts: Counts::default(),
                },
                f64::NEG_INFINITY,
            )
        });
        e.0.counts += row.counts;
        if weight > e.1 {
            e.1 = weight;
            e.0.location = location;
        }
    }
    let mut out: Vec<Site> = map.into_values().map(|v| v.0).collect();
    out.sort_by(|a, b| {
        b.counts
            .live_bytes
            .total_cmp(&a.counts.live_bytes)
            .then(b.counts.alloc_bytes.total_cmp(&a.counts.alloc_bytes))
            .then(a.key.cmp(&b.key))
    });
    out
}

/// Collapsed stacks, root first (`main;work;leaf`), with their integer value (live bytes, or
/// allocated bytes if `alloc`); zero rows are left out. Frames are function names; `;` inside a
/// name becomes `:`.
pub fn collapsed(rows: &[ResolvedRow], alloc: bool) -> Vec<(String, u64)> {
    let mut map: HashMap<String, f64> = HashMap::new();
    for row in rows {
        let v = if alloc {
            row.counts.alloc_bytes
        } else {
            row.counts.live_bytes
        };
        let names: Vec<String> = row.frames().map(|f| f.function.replace(';', ":")).collect();
        let mut key = names.into_iter().rev().collect::<Vec<_>>().join(";");
        if key.is_empty() {
            key = "[no stack]".to_string();
        }
        *map.entry(key).or_default() += v;
    }
    let mut out: Vec<(String, u64)> = map
        .into_iter()
        .map(|(k, v)| (k, v.round() as u64))
        .filter(|e| e.1 > 0)
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::{drop_allocator_frames, ResolvedLoc, SymFrame};

    fn frame(function: &str) -> SymFrame {
        SymFrame {
            function: function.to_string(),
            file: None,
            line: None,
            module: Some("app".to_string()),
            inlined: true,
        }
    }

    /// A sample's first location whose inlined frames start with Rust's allocation code, as a
    /// newer std names it (`<alloc::alloc::Global>::alloc_impl_runtime` first), keeps only the
    /// program's frames from the first of them on.
    #[test]
    fn leading_rust_allocation_frames_are_dropped_whatever_their_spelling() {
        let names = [
            "<alloc::alloc::Global>::alloc_impl_runtime",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "<alloc::raw_vec::RawVecInner>::try_allocate_in",
            "alloc::raw_vec::finish_grow",
            "<alloc::vec::Vec<u8>>::with_capacity_in",
            "<std::path::Path>::_join",
        ];
        let first = ResolvedLoc {
            address: 0x1000,
            frames: names.iter().map(|n| frame(n)).collect(),
        };
        let caller = ResolvedLoc {
            address: 0x2000,
            frames: vec![frame("app::main")],
        };
        let kept = drop_allocator_frames(vec![first, caller]);
        let functions: Vec<&str> = kept
            .iter()
            .flat_map(|l| l.frames.iter().map(|f| f.function.as_str()))
            .collect();
        assert_eq!(
            functions,
            [
                "<alloc::vec::Vec<u8>>::with_capacity_in",
                "<std::path::Path>::_join",
                "app::main"
            ]
        );
    }
}
