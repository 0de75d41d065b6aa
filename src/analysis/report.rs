//! Text and JSON reports: the `top` table (as `jeprof --text` prints it), `top --base`
//! (a later profile minus an earlier one) and the `diff` table (grew, shrank, new, gone).

use super::parse::Counts;
use super::Site;
use std::collections::HashMap;
use std::fmt::Write as _;

/// Which measure a report ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// Live (in-use) bytes and objects.
    Inuse,
    /// Bytes and objects allocated since the start.
    Alloc,
}

impl Measure {
    /// (bytes, objects) of `c` under this measure.
    pub fn of(self, c: &Counts) -> (f64, f64) {
        match self {
            Measure::Inuse => (c.live_bytes, c.live_objects),
            Measure::Alloc => (c.alloc_bytes, c.alloc_objects),
        }
    }
}

/// Bytes in human units: `512 B`, `3.2 KiB`, `12.3 MiB`, `1.5 GiB` (negative with `-`).
pub fn human_bytes(b: f64) -> String {
    let sign = if b < 0.0 { "-" } else { "" };
    let a = b.abs();
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, scale) in units {
        if a >= scale as f64 {
            return format!("{sign}{:.1} {name}", a / scale as f64);
        }
    }
    format!("{sign}{:.0} B", a)
}

fn pct(part: f64, whole: f64) -> String {
    if whole.abs() < f64::EPSILON {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * part / whole)
    }
}

/// Sites of `later` minus those of `base`, matched by key; largest first.
pub fn subtract(later: &[Site], base: &[Site]) -> Vec<Site> {
    let mut map: HashMap<&str, Site> = later.iter().map(|s| (s.key.as_str(), s.clone())).collect();
    for b in base {
        match map.get_mut(b.key.as_str()) {
            Some(s) => s.counts = s.counts - b.counts,
            None => {
                let mut s = b.clone();
                s.counts = Counts::default() - b.counts;
                map.insert(b.key.as_str(), s);
            }
        }
    }
    let mut out: Vec<Site> = map.into_values().collect();
    out.sort_by(|a, b| {
        b.counts
            .live_bytes
            .total_cmp(&a.counts.live_bytes)
            .then(b.counts.alloc_bytes.total_cmp(&a.counts.alloc_bytes))
            .then(a.key.cmp(&b.key))
    });
    out
}

/// What the `top` header says.
pub struct TopHeader<'a> {
    /// The profile's path.
    pub profile: &'a str,
    /// The earlier profile subtracted, if any.
    pub base: Option<&'a str>,
    /// Mean sample interval in bytes (0: unsampled).
    pub sample_period: u64,
}

/// Sorts `sites` by `measure`, largest first.
pub fn rank(sites: &mut [Site], measure: Measure) {
    sites.sort_by(|a, b| {
        measure
            .of(&b.counts)
            .0
            .total_cmp(&measure.of(&a.counts).0)
            .then(a.key.cmp(&b.key))
    });
}

/// The `top` table for already ranked sites; `n` rows at most (0: all).
pub fn top_text(sites: &[Site], measure: Measure, n: usize, h: &TopHeader) -> String {
    let mut out = String::new();
    let (total_b, total_o) = sites.iter().fold((0.0, 0.0), |acc, s| {
        let (b, o) = measure.of(&s.counts);
        (acc.0 + b, acc.1 + o)
    });
    let what = match (measure, h.base.is_some()) {
        (Measure::Inuse, false) => "live",
        (Measure::Inuse, true) => "live growth",
        (Measure::Alloc, false) => "allocated",
        (Measure::Alloc, true) => "allocated growth",
    };
    let _ = writeln!(out, "Profile: {}", h.profile);
    if let Some(b) = h.base {
        let _ = writeln!(out, "Base:    {b} (subtracted)");
    }
    let interval = if h.sample_period == 0 {
        "unsampled (every allocation)".to_string()
    } else {
        format!(
            "1 sample per {} on average",
            human_bytes(h.sample_period as f64)
        )
    };
    let nonzero = sites
        .iter()
        .filter(|s| measure.of(&s.counts).0.abs() >= 0.5)
        .count();
    let _ = writeln!(
        out,
        "Total {what}: {} in {:.0} objects, {nonzero} sites; {interval}",
        human_bytes(total_b),
        total_o
    );
    let shown: Vec<&Site> = sites
        .iter()
        .filter(|s| measure.of(&s.counts).0.abs() >= 0.5)
        .take(if n == 0 { usize::MAX } else { n })
        .collect();
    if shown.is_empty() {
        let _ = writeln!(out, "(no sites)");
        return out;
    }
    let headers = [
        if measure == Measure::Inuse {
            "live"
        } else {
            "allocated"
        },
        "share",
        "cum",
        "objects",
        "function",
        "location",
        "module",
    ];
    let mut cum = 0.0;
    let mut table: Vec<[String; 7]> = Vec::new();
    for s in &shown {
        let (b, o) = measure.of(&s.counts);
        cum += b;
        table.push([
            human_bytes(b),
            pct(b, total_b),
            pct(cum, total_b),
            format!("{o:.0}"),
            s.function.clone(),
            s.location.clone(),
            s.module.clone(),
        ]);
    }
    write_table(&mut out, &headers, &table, 4);
    for s in &shown {
        if s.stack.len() > 1 {
            let _ = writeln!(
                out,
                "\n{} {}:",
                human_bytes(measure.of(&s.counts).0),
                s.function
            );
            for f in &s.stack {
                let _ = writeln!(out, "    {f}");
            }
        }
    }
    out
}

/// Writes an aligned table: the first `right` columns right-aligned, the rest left-aligned.
fn write_table<const N: usize>(
    out: &mut String,
    headers: &[&str; N],
    rows: &[[String; N]],
    right: usize,
) {
    let mut w = [0usize; N];
    for (i, h) in headers.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    // The last column is not padded.
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w[i].saturating_sub(c.chars().count());
            if i < right {
                s.extend(std::iter::repeat_n(' ', pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < N {
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, headers.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}

/// JSON for `top`.
pub fn top_json(sites: &[Site], measure: Measure, n: usize, h: &TopHeader) -> String {
    let shown: Vec<&Site> = sites
        .iter()
        .take(if n == 0 { usize::MAX } else { n })
        .collect();
    let total = sites.iter().fold(Counts::default(), |a, s| a + s.counts);
    let v = serde_json::json!({
        "profile": h.profile,
        "base": h.base,
        "sample_period": h.sample_period,
        "measure": if measure == Measure::Inuse { "inuse" } else { "alloc" },
        "total": total,
        "sites": shown,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

/// How a site changed between two profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the later profile.
    New,
    /// Only in the earlier profile.
    Gone,
    /// More live bytes.
    Grew,
    /// Fewer live bytes.
    Shrank,
    /// No change.
    Same,
}

/// One line of a diff.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiffEntry {
    /// The site (counts: the later profile's).
    pub function: String,
    /// `file:line`.
    pub location: String,
    /// Module file name.
    pub module: String,
    /// Live bytes in the earlier profile.
    pub earlier_bytes: f64,
    /// Live bytes in the later profile.
    pub later_bytes: f64,
    /// `later - earlier`.
    pub change_bytes: f64,
    /// Change relative to the earlier bytes (None when the site is new).
    pub change_ratio: Option<f64>,
    /// Change of live objects.
    pub change_objects: f64,
    /// Classification.
    pub status: Change,
}

/// Compares sites of two profiles by live bytes, largest growth first.
pub fn diff(earlier: &[Site], later: &[Site]) -> Vec<DiffEntry> {
    let before: HashMap<&str, &Site> = earlier.iter().map(|s| (s.key.as_str(), s)).collect();
    let after: HashMap<&str, &Site> = later.iter().map(|s| (s.key.as_str(), s)).collect();
    let mut out = Vec::new();
    let mut keys: Vec<&str> = before.keys().chain(after.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let (e, l) = (before.get(k), after.get(k));
        let site = l.or(e).expect("key from one of the maps");
        let eb = e.map_or(0.0, |s| s.counts.live_bytes);
        let lb = l.map_or(0.0, |s| s.counts.live_bytes);
        let eo = e.map_or(0.0, |s| s.counts.live_objects);
        let lo = l.map_or(0.0, |s| s.counts.live_objects);
        if eb.abs() < 0.5 && lb.abs() < 0.5 {
            continue;
        }
        let status = if eb < 0.5 {
            Change::New
        } else if lb < 0.5 {
            Change::Gone
        } else if (lb - eb).abs() < 0.5 {
            Change::Same
        } else if lb > eb {
            Change::Grew
        } else {
            Change::Shrank
        };
        out.push(DiffEntry {
            function: site.function.clone(),
            location: site.location.clone(),
            module: site.module.clone(),
            earlier_bytes: eb,
            later_bytes: lb,
            change_bytes: lb - eb,
            change_ratio: (eb >= 0.5).then(|| (lb - eb) / eb),
            change_objects: lo - eo,
            status,
        });
    }
    out.sort_by(|a, b| {
        b.change_bytes
            .total_cmp(&a.change_bytes)
            .then(a.function.cmp(&b.function))
    });
    out
}

/// The `diff` table; `n` rows at most (0: all).
pub fn diff_text(entries: &[DiffEntry], n: usize, earlier: &str, later: &str) -> String {
    let mut out = String::new();
    let eb: f64 = entries.iter().map(|e| e.earlier_bytes).sum();
    let lb: f64 = entries.iter().map(|e| e.later_bytes).sum();
    let _ = writeln!(out, "Earlier: {earlier}: {} live", human_bytes(eb));
    let _ = writeln!(out, "Later:   {later}: {} live", human_bytes(lb));
    let _ = writeln!(
        out,
        "Change:  {}{} ({}); largest growth first",
        if lb >= eb { "+" } else { "" },
        human_bytes(lb - eb),
        match pct(lb - eb, eb).as_str() {
            "-" => "-".to_string(),
            p if lb >= eb => format!("+{p}"),
            p => p.to_string(),
        }
    );
    let rows: Vec<[String; 8]> = entries
        .iter()
        .take(if n == 0 { usize::MAX } else { n })
        .map(|e| {
            [
                format!(
                    "{}{}",
                    if e.change_bytes >= 0.0 { "+" } else { "" },
                    human_bytes(e.change_bytes)
                ),
                match e.change_ratio {
                    Some(r) => format!("{}{:.1}%", if r >= 0.0 { "+" } else { "" }, 100.0 * r),
                    None => "new".to_string(),
                },
                human_bytes(e.earlier_bytes),
                human_bytes(e.later_bytes),
                format!("{:?}", e.status).to_lowercase(),
                e.function.clone(),
                e.location.clone(),
                e.module.clone(),
            ]
        })
        .collect();
    if rows.is_empty() {
        let _ = writeln!(out, "(no sites)");
        return out;
    }
    write_table(
        &mut out,
        &[
            "change", "relative", "earlier", "later", "status", "function", "location", "module",
        ],
        &rows,
        4,
    );
    out
}

/// JSON for `diff`.
pub fn diff_json(entries: &[DiffEntry], n: usize, earlier: &str, later: &str) -> String {
    let shown: Vec<&DiffEntry> = entries
        .iter()
        .take(if n == 0 { usize::MAX } else { n })
        .collect();
    let v = serde_json::json!({
        "earlier": earlier,
        "later": later,
        "earlier_bytes": entries.iter().map(|e| e.earlier_bytes).sum::<f64>(),
        "later_bytes": entries.iter().map(|e| e.later_bytes).sum::<f64>(),
        "sites": shown,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(12.3 * 1048576.0), "12.3 MiB");
        assert_eq!(human_bytes(-2048.0), "-2.0 KiB");
    }

    fn site(f: &str, live: f64) -> Site {
        Site::for_test(f, live)
    }

    #[test]
    fn diff_orders_by_growth() {
        let a = [
            site("steady", 100.0),
            site("grow", 100.0),
            site("gone", 50.0),
        ];
        let b = [
            site("steady", 100.0),
            site("grow", 1000.0),
            site("new", 10.0),
        ];
        let d = diff(&a, &b);
        assert_eq!(d[0].function, "grow");
        assert_eq!(d[0].status, Change::Grew);
        assert_eq!(d[1].function, "new");
        assert_eq!(d[1].status, Change::New);
        assert_eq!(d.last().unwrap().status, Change::Gone);
        let steady = d.iter().find(|e| e.function == "steady").unwrap();
        assert_eq!(steady.status, Change::Same);
        let t = diff_text(&d, 0, "a", "b");
        assert!(t.contains("+900 B"), "{t}");
    }

    #[test]
    fn subtract_matches_keys() {
        let s = subtract(
            &[site("a", 300.0), site("b", 10.0)],
            &[site("a", 100.0), site("c", 5.0)],
        );
        assert_eq!(s[0].function, "a");
        assert_eq!(s[0].counts.live_bytes, 200.0);
        assert_eq!(s.last().unwrap().counts.live_bytes, -5.0);
    }
}
