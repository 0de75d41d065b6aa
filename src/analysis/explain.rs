//! `sampalloc explain`: where a process's RSS went at a dump, from the profile's side file
//! `<profile>.mem` ([`parse::read_memory`]), and what that says about it.
//!
//! RSS is cut into five parts that add up to it:
//!
//! - *live*: bytes in blocks the program holds (the engine's exact count, not the sampled
//!   estimate, which is shown beside it);
//! - *allocator_free*: what the allocator's own mappings hold resident beyond live blocks and
//!   metadata, by kind: free blocks inside pages that still hold live ones (fragmentation),
//!   thread caches, empty slabs kept, dirty pages not yet purged, the huge cache;
//! - *metadata*: segment headers and the engine's bookkeeping;
//! - *outside_malloc*: other anonymous memory (mappings the program or a runtime made itself,
//!   thread stacks);
//! - *file_backed*: mapped files (code, data of libraries, mapped files).
//!
//! The verdict is the largest of live, allocator_free and outside_malloc: `leak` (a leak
//! candidate: see `top`), `fragmentation` (free memory the allocator holds) or `outside` (this
//! profile cannot explain it). Given an earlier profile of the same process, the parts of the
//! growth between the two are compared instead.

use super::parse::{self, Memory};
use std::fmt::Write;
use std::path::Path;

/// What most of the memory (or of its growth) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Live data: a leak candidate.
    Leak,
    /// Free memory held in the allocator.
    Fragmentation,
    /// Anonymous memory outside malloc.
    Outside,
}

impl Verdict {
    /// The JSON name: `leak`, `fragmentation`, `outside`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Leak => "leak",
            Verdict::Fragmentation => "fragmentation",
            Verdict::Outside => "outside",
        }
    }
}

/// Free memory in the allocator, by kind (the engine's figures; bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FreeKinds {
    /// Free blocks inside pages that still hold live blocks (and large blocks' page rounding).
    pub partial_pages: f64,
    /// Free blocks in thread caches.
    pub thread_caches: f64,
    /// Empty slabs kept for reuse.
    pub empty_slabs: f64,
    /// Free pages not yet purged.
    pub dirty_pages: f64,
    /// Freed huge blocks kept for reuse.
    pub huge_cache: f64,
}

impl FreeKinds {
    fn named(&self) -> [(&'static str, &'static str, f64); 5] {
        [
            (
                "partial_pages",
                "in pages holding live blocks",
                self.partial_pages,
            ),
            ("thread_caches", "thread caches", self.thread_caches),
            ("empty_slabs", "empty slabs kept", self.empty_slabs),
            (
                "dirty_pages",
                "dirty pages not yet purged",
                self.dirty_pages,
            ),
            ("huge_cache", "huge cache", self.huge_cache),
        ]
    }

    fn sub(&self, o: &FreeKinds) -> FreeKinds {
        FreeKinds {
            partial_pages: self.partial_pages - o.partial_pages,
            thread_caches: self.thread_caches - o.thread_caches,
            empty_slabs: self.empty_slabs - o.empty_slabs,
            dirty_pages: self.dirty_pages - o.dirty_pages,
            huge_cache: self.huge_cache - o.huge_cache,
        }
    }
}

/// RSS in parts (bytes; signed, so that a growth can be one).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Breakdown {
    /// Resident set size.
    pub rss: f64,
    /// Proportional set size.
    pub pss: f64,
    /// Live blocks.
    pub live: f64,
    /// The profile's sampled estimate of live bytes, for comparison.
    pub live_sampled: f64,
    /// Free but resident in the allocator's mappings.
    pub allocator_free: f64,
    /// The engine's metadata.
    pub metadata: f64,
    /// Anonymous memory outside the allocator (stacks included).
    pub outside_malloc: f64,
    /// Of that, thread stacks.
    pub stacks: f64,
    /// File-backed mappings.
    pub file_backed: f64,
    /// Of the allocator's RSS, what transparent huge pages back.
    pub allocator_huge: f64,
    /// Of the anonymous memory outside the allocator, what transparent huge pages back.
    pub outside_huge: f64,
    /// The allocator's free memory by kind (the engine's figures, which may count pages that
    /// are not resident).
    pub free: FreeKinds,
}

impl Breakdown {
    /// The parts of RSS a side file records; `live_sampled` is the profile's estimate.
    pub fn of(m: &Memory, live_sampled: f64) -> Breakdown {
        let g = |k: &str| m.get(k) as f64;
        let ours = g("map.allocator.rss");
        let outside = g("map.anon.rss") + g("map.stack.rss");
        let file = g("map.file.rss");
        let mut rss = g("kernel.rss");
        if rss <= 0.0 {
            rss = ours + outside + file;
        }
        let live = g("engine.allocated").min(ours);
        let metadata = g("engine.metadata").min(ours - live);
        let (allocated, tcache, empty) = (
            g("engine.allocated"),
            g("engine.tcache_cached"),
            g("engine.empty_slab"),
        );
        Breakdown {
            rss,
            pss: g("kernel.pss"),
            live,
            live_sampled,
            allocator_free: ours - live - metadata,
            metadata,
            outside_malloc: outside,
            stacks: g("map.stack.rss"),
            file_backed: file,
            allocator_huge: g("map.allocator.anon_huge").min(ours),
            outside_huge: (g("kernel.anon_huge") - g("map.allocator.anon_huge"))
                .clamp(0.0, outside),
            free: FreeKinds {
                partial_pages: (g("engine.active") - allocated - tcache - empty).max(0.0),
                thread_caches: tcache,
                empty_slabs: empty,
                dirty_pages: (g("engine.dirty") - g("engine.huge_cached")).max(0.0),
                huge_cache: g("engine.huge_cached"),
            },
        }
    }

    /// `self - earlier`, part by part.
    pub fn growth_since(&self, e: &Breakdown) -> Breakdown {
        Breakdown {
            rss: self.rss - e.rss,
            pss: self.pss - e.pss,
            live: self.live - e.live,
            live_sampled: self.live_sampled - e.live_sampled,
            allocator_free: self.allocator_free - e.allocator_free,
            metadata: self.metadata - e.metadata,
            outside_malloc: self.outside_malloc - e.outside_malloc,
            stacks: self.stacks - e.stacks,
            file_backed: self.file_backed - e.file_backed,
            allocator_huge: self.allocator_huge - e.allocator_huge,
            outside_huge: self.outside_huge - e.outside_huge,
            free: self.free.sub(&e.free),
        }
    }

    /// The largest of live, allocator_free and outside_malloc.
    pub fn verdict(&self) -> Verdict {
        let mut best = (Verdict::Leak, self.live);
        for c in [
            (Verdict::Fragmentation, self.allocator_free),
            (Verdict::Outside, self.outside_malloc),
        ] {
            if c.1 > best.1 {
                best = c;
            }
        }
        best.0
    }

    /// The verdict in words, one line. `top` is the command that shows the live sites.
    pub fn verdict_words(&self, top: &str) -> String {
        let share = |v: f64| {
            if self.rss > 0.0 {
                format!("{:.0} % of {} RSS", 100.0 * v / self.rss, mib(self.rss))
            } else {
                "of RSS".to_string()
            }
        };
        match self.verdict() {
            Verdict::Leak => format!(
                "live data: a leak candidate, see top ({} in blocks the program holds, {}: {top})",
                mib(self.live),
                share(self.live)
            ),
            Verdict::Fragmentation => {
                let inside = self.free.partial_pages.min(self.allocator_free).max(0.0);
                if 2.0 * inside >= self.allocator_free {
                    format!(
                        "fragmentation: {} free inside pages that still hold live blocks ({} free in the allocator, {})",
                        mib(inside),
                        mib(self.allocator_free),
                        share(self.allocator_free)
                    )
                } else {
                    let (_, what, v) = self
                        .free
                        .named()
                        .into_iter()
                        .max_by(|a, b| a.2.total_cmp(&b.2))
                        .unwrap_or(("", "", 0.0));
                    format!(
                        "fragmentation: {} free in the allocator ({}), mostly held for reuse rather than inside pages that hold live blocks ({}); the largest part: {what}, {}",
                        mib(self.allocator_free),
                        share(self.allocator_free),
                        mib(inside),
                        mib(v)
                    )
                }
            }
            Verdict::Outside => format!(
                "most of RSS is outside malloc (anonymous mappings such as a JVM heap): this profile cannot explain it ({}, {})",
                mib(self.outside_malloc),
                share(self.outside_malloc)
            ),
        }
    }
}

/// `12.3 MiB` (signed for growths).
pub fn mib(v: f64) -> String {
    format!("{:.1} MiB", v / 1048576.0)
}

/// A profile explained, and optionally its growth since an earlier one.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The profile.
    pub profile: String,
    /// Its parts.
    pub parts: Breakdown,
    /// The earlier profile and the growth since, if one was given.
    pub growth: Option<(String, Breakdown)>,
}

impl Explanation {
    /// The verdict: of the growth if there is one, else of the profile.
    pub fn verdict(&self) -> Verdict {
        match &self.growth {
            Some((_, g)) => g.verdict(),
            None => self.parts.verdict(),
        }
    }

    /// The verdict in words, one line.
    pub fn verdict_words(&self) -> String {
        match &self.growth {
            Some((earlier, g)) => {
                let cmd = format!("sampalloc diff {earlier} {}", self.profile);
                if g.rss <= 0.0 {
                    format!(
                        "RSS did not grow ({}); of what changed: {}",
                        signed(g.rss),
                        g.verdict_words(&cmd)
                    )
                } else {
                    format!("RSS grew {}: {}", signed(g.rss), g.verdict_words(&cmd))
                }
            }
            None => self
                .parts
                .verdict_words(&format!("sampalloc top {}", self.profile)),
        }
    }
}

fn signed(v: f64) -> String {
    if v >= 0.0 {
        format!("+{}", mib(v))
    } else {
        mib(v)
    }
}

/// The sampled estimate of live bytes in the profile at `path`.
fn sampled_live(path: &Path) -> Result<f64, String> {
    Ok(parse::read(path)?.total().live_bytes)
}

fn breakdown_of(path: &Path) -> Result<Breakdown, String> {
    let m = parse::read_memory(path)?;
    Ok(Breakdown::of(&m, sampled_live(path)?))
}

/// Explains the profile at `path`, and its growth since `earlier` if given.
pub fn explain(path: &Path, earlier: Option<&Path>) -> Result<Explanation, String> {
    let parts = breakdown_of(path)?;
    let growth = match earlier {
        Some(e) => Some((
            e.display().to_string(),
            parts.growth_since(&breakdown_of(e)?),
        )),
        None => None,
    };
    Ok(Explanation {
        profile: path.display().to_string(),
        parts,
        growth,
    })
}

/// The one-line verdict for the profile at `path` (for `sampalloc run`'s report), or why there
/// is none.
pub fn verdict_line(path: &Path) -> String {
    match explain(path, None) {
        Ok(e) => format!("verdict: {}", e.verdict_words()),
        Err(e) => format!("no verdict: {e}"),
    }
}

fn table(out: &mut String, b: &Breakdown, sign: bool) {
    let fmt = |v: f64| if sign { signed(v) } else { mib(v) };
    let pct = |v: f64| {
        if !sign && b.rss > 0.0 {
            format!("{:>5.1} %", 100.0 * v / b.rss)
        } else {
            String::new()
        }
    };
    let _ = writeln!(out, "  {:<34}{:>14}", "RSS", fmt(b.rss));
    let _ = writeln!(
        out,
        "  {:<34}{:>14} {}   (the profile's sampled estimate: {})",
        "live data",
        fmt(b.live),
        pct(b.live),
        fmt(b.live_sampled)
    );
    let _ = writeln!(
        out,
        "  {:<34}{:>14} {}",
        "free in the allocator",
        fmt(b.allocator_free),
        pct(b.allocator_free)
    );
    for (_, what, v) in b.free.named() {
        let _ = writeln!(out, "    {:<32}{:>14}", what, fmt(v));
    }
    let _ = writeln!(
        out,
        "  {:<34}{:>14} {}",
        "allocator metadata",
        fmt(b.metadata),
        pct(b.metadata)
    );
    let _ = writeln!(
        out,
        "  {:<34}{:>14}",
        "the allocator's, in huge pages",
        fmt(b.allocator_huge)
    );
    let _ = writeln!(
        out,
        "  {:<34}{:>14} {}",
        "outside malloc (anonymous)",
        fmt(b.outside_malloc),
        pct(b.outside_malloc)
    );
    let _ = writeln!(
        out,
        "    {:<32}{:>14}",
        "of which thread stacks",
        fmt(b.stacks)
    );
    let _ = writeln!(
        out,
        "    {:<32}{:>14}",
        "of which in huge pages",
        fmt(b.outside_huge)
    );
    let _ = writeln!(
        out,
        "  {:<34}{:>14} {}",
        "file-backed",
        fmt(b.file_backed),
        pct(b.file_backed)
    );
}

/// The explanation as text.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Memory at {} (PSS {}):", e.profile, mib(e.parts.pss));
    table(&mut out, &e.parts, false);
    let _ = writeln!(
        out,
        "  (free by kind: the engine's figures; pages it counts that were never touched or were purged are not in RSS)"
    );
    if let Some((earlier, g)) = &e.growth {
        let _ = writeln!(out, "\nGrowth since {earlier}:");
        table(&mut out, g, true);
    }
    let _ = writeln!(out, "\nVerdict: {}", e.verdict_words());
    out
}

fn json_parts(b: &Breakdown) -> serde_json::Value {
    let r = |v: f64| v.round() as i64;
    let mut free = serde_json::Map::new();
    for (k, _, v) in b.free.named() {
        free.insert(k.to_string(), r(v).into());
    }
    serde_json::json!({
        "rss": r(b.rss),
        "pss": r(b.pss),
        "live": r(b.live),
        "live_sampled": r(b.live_sampled),
        "allocator_free": r(b.allocator_free),
        "allocator_free_by_kind": free,
        "metadata": r(b.metadata),
        "outside_malloc": r(b.outside_malloc),
        "stacks": r(b.stacks),
        "file_backed": r(b.file_backed),
        "allocator_huge_pages": r(b.allocator_huge),
        "outside_malloc_huge_pages": r(b.outside_huge),
    })
}

/// The explanation as one JSON object: the parts of RSS (bytes) at the top level, `verdict`
/// and `message`, and with an earlier profile `growth` (the same parts, signed) and `earlier`;
/// the verdict is then the growth's.
pub fn json(e: &Explanation) -> String {
    let mut v = json_parts(&e.parts);
    v["profile"] = e.profile.clone().into();
    v["verdict"] = e.verdict().name().into();
    v["message"] = e.verdict_words().into();
    if let Some((earlier, g)) = &e.growth {
        v["earlier"] = earlier.clone().into();
        let mut gv = json_parts(g);
        gv["verdict"] = g.verdict().name().into();
        v["growth"] = gv;
    }
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(pairs: &[(&str, u64)]) -> Memory {
        let mut text = String::from("sampalloc memory 1\n");
        for (k, v) in pairs {
            text.push_str(&format!("{k} {v}\n"));
        }
        parse::parse_memory(text.as_bytes()).unwrap()
    }

    const M: u64 = 1 << 20;

    #[test]
    fn parts_add_up_and_the_largest_decides() {
        let m = memory(&[
            ("kernel.rss", 110 * M),
            ("map.allocator.rss", 80 * M),
            ("map.anon.rss", 10 * M),
            ("map.stack.rss", M),
            ("map.file.rss", 19 * M),
            ("engine.allocated", 8 * M),
            ("engine.active", 70 * M),
            ("engine.metadata", 2 * M),
            ("engine.tcache_cached", M),
            ("engine.dirty", 5 * M),
        ]);
        let b = Breakdown::of(&m, 7.5 * M as f64);
        let sum = b.live + b.allocator_free + b.metadata + b.outside_malloc + b.file_backed;
        assert_eq!(sum, b.rss);
        assert_eq!(b.allocator_free, 70.0 * M as f64);
        assert_eq!(b.free.partial_pages, 61.0 * M as f64);
        assert_eq!(b.verdict(), Verdict::Fragmentation);
        let w = b.verdict_words("t");
        assert!(
            w.starts_with("fragmentation: 61.0 MiB free inside pages that still hold live"),
            "{w}"
        );
    }

    /// Huge pages are shown beside the parts they back: the allocator's from its own figure,
    /// the rest of the process's anonymous huge pages as outside malloc.
    #[test]
    fn huge_pages_are_reported_beside_the_parts() {
        let m = memory(&[
            ("kernel.rss", 100 * M),
            ("map.allocator.rss", 60 * M),
            ("map.anon.rss", 30 * M),
            ("map.file.rss", 10 * M),
            ("engine.allocated", 50 * M),
            ("kernel.anon_huge", 50 * M),
            ("map.allocator.anon_huge", 36 * M),
        ]);
        let b = Breakdown::of(&m, 0.0);
        assert_eq!(
            (b.allocator_huge, b.outside_huge),
            (36.0 * M as f64, 14.0 * M as f64)
        );
        let e = Explanation {
            profile: "p".into(),
            parts: b,
            growth: None,
        };
        let t = text(&e);
        assert!(
            t.contains("the allocator's, in huge pages") && t.contains("36.0 MiB"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&e)).unwrap();
        assert_eq!(j["allocator_huge_pages"], 36 * M);
        assert_eq!(j["outside_malloc_huge_pages"], 14 * M);
    }

    #[test]
    fn growth_is_judged_on_what_grew() {
        let early = memory(&[
            ("kernel.rss", 200 * M),
            ("map.allocator.rss", 10 * M),
            ("map.anon.rss", 180 * M),
            ("map.file.rss", 10 * M),
            ("engine.allocated", 9 * M),
        ]);
        let late = memory(&[
            ("kernel.rss", 260 * M),
            ("map.allocator.rss", 70 * M),
            ("map.anon.rss", 180 * M),
            ("map.file.rss", 10 * M),
            ("engine.allocated", 69 * M),
        ]);
        let (e, l) = (Breakdown::of(&early, 0.0), Breakdown::of(&late, 0.0));
        assert_eq!(l.verdict(), Verdict::Outside);
        let g = l.growth_since(&e);
        assert_eq!(g.verdict(), Verdict::Leak);
        assert_eq!(g.live, 60.0 * M as f64);
        let x = Explanation {
            profile: "b".into(),
            parts: l,
            growth: Some(("a".into(), g)),
        };
        assert!(x
            .verdict_words()
            .starts_with("RSS grew +60.0 MiB: live data"));
        let v: serde_json::Value = serde_json::from_str(&json(&x)).unwrap();
        assert_eq!(v["verdict"], "leak");
        assert_eq!(v["growth"]["live"], 60 * M);
        assert_eq!(v["outside_malloc"], 180 * M);
    }

    #[test]
    fn a_bad_side_file_names_its_line() {
        assert!(parse::parse_memory(b"hello\n").is_err());
        let e = parse::parse_memory(b"sampalloc memory 1\nkernel.rss x\n").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
