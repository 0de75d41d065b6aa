//! Trends over a series of profiles of one run (interval, timed, signal or high-water dumps):
//! per site, the live bytes at each point, the growth over the later part of the run and a
//! status, so that memory that keeps growing is told apart from a cache that filled early.
//!
//! The growth of a site is the Theil–Sen slope (the median of the pairwise slopes, which a few
//! noisy points do not move) of its live bytes over the last half of the points, times the
//! number of steps there. A site is *growing* when that growth is at least
//! [`GROWTH_FRACTION`] of its size over the same part and at least [`NOISE_SIGMAS`] times the
//! sampling noise of such a change, *shrinking* when it is that much negative, *gone* when it
//! holds nothing at the last point, and *levelled* otherwise. Growing sites come first, by
//! growth; then the others by their size at the end.
//!
//! The noise: a sampled estimate of `B` bytes in objects of `s` bytes, sampled every `R` bytes
//! on average, has variance `B·s·(1-p)/p` with `p = 1-exp(-s/R)` (about `B·R` for small
//! objects). The estimated change of live bytes over the later part counts the objects
//! allocated there that are still live and those freed there: about `2·A - G` bytes for `A`
//! bytes allocated and a growth `G`. A cache whose entries are replaced slowly wanders by that
//! much; a leak (`A = G`) is held to `sqrt(G·R)`. Without cumulative counts (jemalloc without
//! `prof_accum`), `2·size` is taken for `A`.
//!
//! The x axis is the point's rank in the series (dumps ordered by sequence number): interval
//! dumps are evenly spaced in bytes allocated, timed ones in time.

use super::report::human_bytes;
use super::Site;
use sampalloc_core::profile::ProfileName;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Late growth relative to the site's size below which a site counts as levelled.
pub const GROWTH_FRACTION: f64 = 0.2;
/// Late growth, in standard deviations of its sampling noise, below which a site counts as
/// levelled.
pub const NOISE_SIGMAS: f64 = 2.0;

/// One profile of the series.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Point {
    /// The file.
    pub file: String,
    /// Its sequence number, from its name.
    pub seq: Option<u64>,
    /// Its kind letter (`i`, `s`, `u`, `f`), from its name.
    pub kind: Option<char>,
    /// Live bytes of all sites.
    pub live_bytes: f64,
    /// Mean sample interval in bytes (0: unsampled).
    pub sample_period: u64,
}

/// What a site does over the later part of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Grows by a good share of its size.
    Growing,
    /// About flat.
    Levelled,
    /// Shrinks by a good share of its size.
    Shrinking,
    /// Holds nothing at the last point.
    Gone,
}

impl Status {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Status::Growing => "growing",
            Status::Levelled => "levelled",
            Status::Shrinking => "shrinking",
            Status::Gone => "gone",
        }
    }
}

/// A site over the series.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrendSite {
    /// Leaf function.
    pub function: String,
    /// `file:line` of the leaf frame (of its largest contributor at the last point it had).
    pub location: String,
    /// Module file name.
    pub module: String,
    /// Live bytes at each point.
    pub live_bytes: Vec<f64>,
    /// Robust slope over the later part, bytes per point.
    pub growth_per_point: f64,
    /// Growth over the later part (slope × steps).
    pub late_growth: f64,
    /// One standard deviation of the sampling noise of that growth.
    pub noise: f64,
    /// The classification.
    pub status: Status,
    /// Bytes allocated since the start, at each point.
    #[serde(skip)]
    pub alloc_bytes: Vec<f64>,
    /// Mean object size (allocated, else live; 0: unknown).
    #[serde(skip)]
    pub mean_object: f64,
}

impl TrendSite {
    /// Live bytes at the last point.
    pub fn last(&self) -> f64 {
        self.live_bytes.last().copied().unwrap_or(0.0)
    }

    /// Most live bytes at any point.
    pub fn max(&self) -> f64 {
        self.live_bytes.iter().copied().fold(0.0, f64::max)
    }
}

/// The series and its sites, ranked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trend {
    /// The profiles, in order.
    pub points: Vec<Point>,
    /// Index of the first point of the later part.
    pub late_from: usize,
    /// The sites, growing first.
    pub sites: Vec<TrendSite>,
}

/// The index where the later part (the last half, at least two points) starts.
pub fn late_start(n: usize) -> usize {
    (n / 2).min(n.saturating_sub(2))
}

/// The Theil–Sen slope of `ys` over x = 0, 1, 2, …: the median of the slopes of all pairs
/// (0 for fewer than two points).
pub fn theil_sen(ys: &[f64]) -> f64 {
    let mut slopes = Vec::with_capacity(ys.len() * ys.len().saturating_sub(1) / 2);
    for i in 0..ys.len() {
        for j in i + 1..ys.len() {
            slopes.push((ys[j] - ys[i]) / (j - i) as f64);
        }
    }
    if slopes.is_empty() {
        return 0.0;
    }
    slopes.sort_by(f64::total_cmp);
    let m = slopes.len() / 2;
    if slopes.len() % 2 == 1 {
        slopes[m]
    } else {
        (slopes[m - 1] + slopes[m]) / 2.0
    }
}

/// The variance of a sampled estimate per byte estimated, for objects of `mean_object` bytes
/// sampled every `period` bytes on average (`s·(1-p)/p`; `period` when the size is unknown).
pub fn variance_per_byte(mean_object: f64, period: u64) -> f64 {
    if period == 0 {
        return 0.0;
    }
    let r = period as f64;
    if mean_object <= 0.0 {
        return r;
    }
    let p = -(-mean_object / r).exp_m1();
    if p <= 0.0 {
        r
    } else {
        mean_object * (1.0 - p) / p
    }
}

/// What [`classify`] finds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Class {
    /// Slope per point over the later part.
    pub slope: f64,
    /// Growth over the later part.
    pub growth: f64,
    /// One standard deviation of the growth's sampling noise.
    pub noise: f64,
    /// The status.
    pub status: Status,
}

/// Classifies a series of live bytes, with the bytes allocated since the start at each point
/// (empty or all zero: unknown), the mean object size (0: unknown) and the sample period.
pub fn classify(live: &[f64], alloc: &[f64], mean_object: f64, period: u64) -> Class {
    let from = late_start(live.len());
    let late = &live[from..];
    let slope = theil_sen(late);
    let growth = slope * late.len().saturating_sub(1) as f64;
    let size = late.iter().copied().fold(0.0, f64::max).max(1.0);
    let allocated = match (alloc.get(from), alloc.last()) {
        (Some(&a), Some(&b)) if b > 0.0 => (b - a).max(0.0),
        _ => 2.0 * size,
    };
    let turnover = (2.0 * allocated - growth).max(growth.abs());
    let noise = (turnover * variance_per_byte(mean_object, period)).sqrt();
    let threshold = (GROWTH_FRACTION * size).max(NOISE_SIGMAS * noise);
    let status = if live.last().is_some_and(|&v| v < 0.5) {
        Status::Gone
    } else if growth >= threshold {
        Status::Growing
    } else if growth <= -threshold {
        Status::Shrinking
    } else {
        Status::Levelled
    };
    Class {
        slope,
        growth,
        noise,
        status,
    }
}

/// Builds the trend from each point's sites (as [`super::sites`] aggregates them).
pub fn build(series: Vec<(Point, Vec<Site>)>) -> Trend {
    let n = series.len();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut sites: Vec<TrendSite> = Vec::new();
    let mut points = Vec::with_capacity(n);
    for (i, (point, point_sites)) in series.into_iter().enumerate() {
        for s in point_sites {
            let k = *index.entry(s.key.clone()).or_insert_with(|| {
                sites.push(TrendSite {
                    function: s.function.clone(),
                    location: s.location.clone(),
                    module: s.module.clone(),
                    live_bytes: vec![0.0; n],
                    growth_per_point: 0.0,
                    late_growth: 0.0,
                    noise: 0.0,
                    status: Status::Levelled,
                    alloc_bytes: vec![0.0; n],
                    mean_object: 0.0,
                });
                sites.len() - 1
            });
            let t = &mut sites[k];
            t.live_bytes[i] += s.counts.live_bytes;
            t.alloc_bytes[i] += s.counts.alloc_bytes;
            let c = &s.counts;
            if c.alloc_objects >= 0.5 {
                t.mean_object = c.alloc_bytes / c.alloc_objects;
            } else if c.live_objects >= 0.5 && t.mean_object == 0.0 {
                t.mean_object = c.live_bytes / c.live_objects;
            }
            if s.counts.live_bytes >= 0.5 {
                t.location = s.location;
            }
        }
        points.push(point);
    }
    sites.retain(|s| s.max() >= 0.5);
    let period = points
        .iter()
        .map(|p: &Point| p.sample_period)
        .max()
        .unwrap_or(0);
    for s in &mut sites {
        let c = classify(&s.live_bytes, &s.alloc_bytes, s.mean_object, period);
        (s.growth_per_point, s.late_growth, s.noise, s.status) =
            (c.slope, c.growth, c.noise, c.status);
    }
    sites.sort_by(|a, b| {
        a.status.cmp(&b.status).then_with(|| match a.status {
            Status::Growing => b.late_growth.total_cmp(&a.late_growth),
            Status::Gone => b.max().total_cmp(&a.max()),
            _ => b.last().total_cmp(&a.last()),
        })
    });
    Trend {
        points,
        late_from: late_start(n),
        sites,
    }
}

/// The profiles of one run, in sequence order. One directory: its files named
/// `<prefix>.<pid>.<seq>.<kind>.heap`, of process `pid` if given, else of the process with the
/// most of them (the others are named in the returned note). Files: ordered by sequence number
/// when every name carries one (and all are of one process), else kept in the order given.
pub fn series(
    inputs: &[PathBuf],
    pid: Option<u32>,
) -> Result<(Vec<PathBuf>, Option<String>), String> {
    use std::os::unix::ffi::OsStrExt;
    let named = |p: &Path| {
        p.file_name()
            .and_then(|n| ProfileName::parse(n.as_bytes()).map(|n| (n.pid, n.seq)))
    };
    if let [dir] = inputs {
        if dir.is_dir() {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            let mut by_pid: HashMap<u32, Vec<(u64, PathBuf)>> = HashMap::new();
            for e in entries.flatten() {
                let path = e.path();
                if let Some((p, seq)) = named(&path) {
                    by_pid.entry(p).or_default().push((seq, path));
                }
            }
            let mut pids: Vec<(usize, u32)> = by_pid.iter().map(|(p, v)| (v.len(), *p)).collect();
            pids.sort_by(|a, b| b.cmp(a));
            let chosen = match pid {
                Some(p) => p,
                None => match pids.first() {
                    Some(&(_, p)) => p,
                    None => {
                        return Err(format!(
                            "no profiles (<prefix>.<pid>.<seq>.<kind>.heap) in {}",
                            dir.display()
                        ))
                    }
                },
            };
            let mut files = by_pid
                .remove(&chosen)
                .ok_or_else(|| format!("no profiles of pid {chosen} in {}", dir.display()))?;
            files.sort();
            let note = (pid.is_none() && pids.len() > 1).then(|| {
                let others: Vec<String> = pids[1..]
                    .iter()
                    .map(|(n, p)| format!("{p} ({n})"))
                    .collect();
                format!(
                    "{} holds profiles of several processes; showing pid {chosen} ({} profiles); others (--pid): {}",
                    dir.display(),
                    files.len(),
                    others.join(", ")
                )
            });
            return Ok((files.into_iter().map(|f| f.1).collect(), note));
        }
    }
    let names: Option<Vec<(u32, u64)>> = inputs.iter().map(|p| named(p)).collect();
    match names {
        Some(names) => {
            let mut pids: Vec<u32> = names.iter().map(|n| n.0).collect();
            pids.sort_unstable();
            pids.dedup();
            if pids.len() > 1 && pid.is_none() {
                return Err(format!(
                    "the profiles are of several processes (pids {}): give one run's, or --pid",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let mut files: Vec<((u32, u64), PathBuf)> = names
                .into_iter()
                .zip(inputs.iter().cloned())
                .filter(|((p, _), _)| pid.is_none_or(|want| want == *p))
                .collect();
            files.sort();
            Ok((files.into_iter().map(|f| f.1).collect(), None))
        }
        None => Ok((inputs.to_vec(), None)),
    }
}

/// The point for `path`, with its name's sequence number and kind.
pub fn point(path: &Path, live_bytes: f64, sample_period: u64) -> Point {
    use std::os::unix::ffi::OsStrExt;
    let name = path
        .file_name()
        .and_then(|n| ProfileName::parse(n.as_bytes()));
    Point {
        file: path.display().to_string(),
        seq: name.as_ref().map(|n| n.seq),
        kind: name.map(|n| n.kind as char),
        live_bytes,
        sample_period,
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values` scaled to their own maximum, at most `width` characters (longer
/// series are averaged in buckets).
pub fn sparkline(values: &[f64], width: usize) -> String {
    let width = width.max(1);
    let buckets: Vec<f64> = if values.len() <= width {
        values.to_vec()
    } else {
        (0..width)
            .map(|b| {
                let (lo, hi) = (b * values.len() / width, (b + 1) * values.len() / width);
                let part = &values[lo..hi.max(lo + 1)];
                part.iter().sum::<f64>() / part.len() as f64
            })
            .collect()
    };
    let max = buckets.iter().copied().fold(0.0, f64::max);
    buckets
        .iter()
        .map(|&v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v.max(0.0) / max) * 7.0).round() as usize]
            }
        })
        .collect()
}

fn signed(b: f64) -> String {
    let b = if b.abs() < 0.5 { 0.0 } else { b };
    format!("{}{}", if b >= 0.0 { "+" } else { "" }, human_bytes(b))
}

/// The `trend` table: `n` sites at most (0: all).
pub fn text(t: &Trend, n: usize) -> String {
    let mut out = String::new();
    let np = t.points.len();
    let first = t.points.first().map_or(0.0, |p| p.live_bytes);
    let last = t.points.last().map_or(0.0, |p| p.live_bytes);
    let mut kinds: Vec<char> = t.points.iter().filter_map(|p| p.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let _ = writeln!(
        out,
        "Trend over {np} profiles{}, {} … {}",
        if kinds.is_empty() {
            String::new()
        } else {
            format!(
                " (kinds {})",
                kinds
                    .iter()
                    .map(char::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        t.points.first().map_or("", |p| p.file.as_str()),
        t.points
            .last()
            .and_then(|p| Path::new(&p.file).file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Total live: {} at the first, {} at the last; late growth: a robust slope over the last {} profiles",
        human_bytes(first),
        human_bytes(last),
        np - t.late_from
    );
    let _ = writeln!(
        out,
        "Growing: late growth at least {:.0}% of the site's size and {NOISE_SIGMAS:.0} standard deviations of sampling noise; sparklines scaled to each site's maximum",
        100.0 * GROWTH_FRACTION
    );
    let shown: Vec<&TrendSite> = t
        .sites
        .iter()
        .take(if n == 0 { usize::MAX } else { n })
        .collect();
    if shown.is_empty() {
        let _ = writeln!(out, "(no sites)");
        return out;
    }
    let headers = [
        "status",
        "late growth",
        "per profile",
        "last",
        "max",
        "trend",
        "function",
        "location",
        "module",
    ];
    let rows: Vec<[String; 9]> = shown
        .iter()
        .map(|s| {
            [
                s.status.name().to_string(),
                signed(s.late_growth),
                signed(s.growth_per_point),
                human_bytes(s.last()),
                human_bytes(s.max()),
                sparkline(&s.live_bytes, 48),
                s.function.clone(),
                s.location.clone(),
                s.module.clone(),
            ]
        })
        .collect();
    let mut w = [0usize; 9];
    for (i, h) in headers.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w[i].saturating_sub(c.chars().count());
            // status, trend and the names left-aligned; the numbers right-aligned
            if (1..=4).contains(&i) {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// JSON for `trend`: the points and `n` sites at most (0: all).
pub fn json(t: &Trend, n: usize) -> String {
    let shown: Vec<&TrendSite> = t
        .sites
        .iter()
        .take(if n == 0 { usize::MAX } else { n })
        .collect();
    let v = serde_json::json!({
        "points": t.points,
        "late_from": t.late_from,
        "growth_fraction": GROWTH_FRACTION,
        "noise_sigmas": NOISE_SIGMAS,
        "sites": shown,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 10] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// An SVG line chart of the live bytes of the first `k` sites over the series.
pub fn svg(t: &Trend, k: usize, title: &str) -> String {
    let shown: Vec<&TrendSite> = t.sites.iter().take(k.clamp(1, COLORS.len())).collect();
    let (w, h) = (960.0, 540.0);
    let (left, right, top, bottom) = (80.0, 20.0, 40.0, 60.0 + 18.0 * shown.len() as f64);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let n = t.points.len().max(2);
    let ymax = shown.iter().map(|s| s.max()).fold(0.0, f64::max).max(1.0);
    let x = |i: usize| left + pw * i as f64 / (n - 1) as f64;
    let y = |v: f64| top + ph * (1.0 - v / ymax);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        w / 2.0,
        xml_escape(title)
    );
    for g in 0..=4 {
        let v = ymax * g as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(v),
            left + pw,
            left - 6.0,
            y(v) + 4.0,
            human_bytes(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#000"/><line x1="{left}" y1="{top}" x2="{left}" y2="{0}" stroke="#000"/>"##,
        top + ph,
        left + pw
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">profile (in sequence order, {} in all); the later part starts at the dashed line</text>"#,
        left + pw / 2.0,
        top + ph + 20.0,
        t.points.len()
    );
    let _ = writeln!(
        s,
        r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="#999" stroke-dasharray="4 4"/>"##,
        x(t.late_from),
        top + ph
    );
    for (c, site) in shown.iter().enumerate() {
        let pts: Vec<String> = site
            .live_bytes
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v.max(0.0))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}</title></polyline>"#,
            COLORS[c],
            pts.join(" "),
            xml_escape(&site.function)
        );
        let ly = top + ph + 40.0 + 18.0 * c as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{}" y="{:.1}">{} {} ({} at the end, {} over the later part)</text>"#,
            ly - 4.0,
            COLORS[c],
            left + 20.0,
            ly,
            site.status.name(),
            xml_escape(&site.function),
            human_bytes(site.last()),
            signed(site.late_growth)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(f: &str, live: f64) -> Site {
        Site::for_test(f, live)
    }

    #[test]
    fn theil_sen_ignores_an_outlier() {
        assert_eq!(theil_sen(&[1.0, 2.0, 3.0, 100.0, 5.0]), 1.0);
        assert_eq!(theil_sen(&[4.0]), 0.0);
    }

    #[test]
    fn a_cache_that_filled_early_is_levelled_and_the_leak_comes_first() {
        let mib = 1048576.0;
        let n = 20;
        let series = (0..n)
            .map(|i| {
                let cache = 48.0
                    * mib
                    * ((i + 1) as f64 / 5.0).min(1.0)
                    * (1.0 + 0.03 * ((i % 3) as f64 - 1.0));
                let leak = 16.0 * mib * (i + 1) as f64 / n as f64;
                let gone = if i < 10 { 4.0 * mib } else { 0.0 };
                let shrink = 8.0 * mib * (n - i) as f64 / n as f64;
                (
                    point(Path::new(&format!("p.1.{i}.i.heap")), cache + leak, 0),
                    vec![
                        site("cache", cache),
                        site("leak", leak),
                        site("tmp", gone),
                        site("drain", shrink),
                    ],
                )
            })
            .collect();
        let t = build(series);
        let names: Vec<(&str, Status)> = t
            .sites
            .iter()
            .map(|s| (s.function.as_str(), s.status))
            .collect();
        assert_eq!(
            names,
            [
                ("leak", Status::Growing),
                ("cache", Status::Levelled),
                ("drain", Status::Shrinking),
                ("tmp", Status::Gone)
            ]
        );
        assert!((t.sites[0].late_growth - 16.0 * mib * 9.0 / 20.0).abs() < 1.0);
        let txt = text(&t, 0);
        assert!(txt.contains("growing"), "{txt}");
        assert!(svg(&t, 8, "t").contains("<polyline"));
    }

    #[test]
    fn sampling_noise_holds_a_slowly_replaced_cache_level() {
        let mib = 1048576.0;
        // 48 MiB of 64 KiB entries replaced slowly (90 MiB allocated over the later part),
        // sampled every 512 KiB: one standard deviation of its late change is about 9 MiB, so
        // a wander of +13.5 MiB (22 %) is no growth (unsampled, it would be); a leak of 1 KiB
        // objects growing by 7.2 MiB is (one standard deviation: 1.9 MiB).
        let live: Vec<f64> = (0..20)
            .map(|i| {
                48.0 * mib
                    + if i >= 10 {
                        (i - 10) as f64 * 1.5 * mib
                    } else {
                        0.0
                    }
            })
            .collect();
        let alloc: Vec<f64> = (0..20).map(|i| 10.0 * mib * i as f64).collect();
        let c = classify(&live, &alloc, 65536.0, 1 << 19);
        assert_eq!(c.status, Status::Levelled, "{c:?}");
        assert!((8.0 * mib..11.0 * mib).contains(&c.noise), "{c:?}");
        assert_eq!(classify(&live, &alloc, 65536.0, 0).status, Status::Growing);
        let leak: Vec<f64> = (0..20).map(|i| 0.8 * mib * i as f64).collect();
        let c = classify(&leak, &leak, 1024.0, 1 << 19);
        assert_eq!(c.status, Status::Growing, "{c:?}");
        assert!((1.8 * mib..2.1 * mib).contains(&c.noise), "{c:?}");
        assert!((variance_per_byte(1.0, 1 << 19) - 524288.0).abs() < 1.0);
    }

    #[test]
    fn sparklines() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 7.0], 10), "▁▂▃█");
        assert_eq!(sparkline(&[0.0; 3], 10), "▁▁▁");
        assert_eq!(sparkline(&[0.0, 0.0, 7.0, 7.0], 2), "▁█");
    }
}
