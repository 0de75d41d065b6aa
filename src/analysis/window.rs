//! One window of a process's allocations: what `sampalloc push` sends to servers that store
//! what they are sent and compute no deltas (Grafana Pyroscope).
//!
//! A heap profile's `alloc_*` counts are cumulative since the process started; its live counts
//! are as of the dump. [`window`] keeps the later profile's live counts and replaces each
//! stack's cumulative counts with their growth since the earlier profile of the same process:
//! the allocations of the window between the two dumps. Summed over successive windows, the
//! counts are the last profile's cumulative ones again.

use super::parse::{Counts, Profile, Row};
use std::collections::HashMap;

/// Whether `later` can follow `earlier` as the next dump of the same process: the cumulative
/// bytes and objects never go down (a restarted process under a reused pid starts again at 0).
pub fn follows(earlier: &Profile, later: &Profile) -> bool {
    let (e, l) = (earlier.total(), later.total());
    // Scaled estimates are rounded per row when written: allow a byte's slack per row.
    let slack = later.rows.len().max(earlier.rows.len()) as f64 + 1.0;
    l.alloc_bytes + slack >= e.alloc_bytes && l.alloc_objects + slack >= e.alloc_objects
}

/// `later` with each stack's `alloc_*` counts replaced by their growth since `earlier`
/// (never below 0), its live counts unchanged. Stacks with nothing left are dropped. Without
/// `earlier` (the first dump of a process) the profile is returned as it is: alloc since the
/// process started.
pub fn window(earlier: Option<&Profile>, later: &Profile) -> Profile {
    let Some(earlier) = earlier else {
        return later.clone();
    };
    let mut before: HashMap<&[u64], Counts> = HashMap::with_capacity(earlier.rows.len());
    for r in &earlier.rows {
        *before.entry(r.frames.as_slice()).or_default() += r.counts;
    }
    let mut out = later.clone();
    out.rows = Vec::with_capacity(later.rows.len());
    // Rows with the same stack share the earlier counts: subtract them once.
    let mut merged: HashMap<&[u64], usize> = HashMap::with_capacity(later.rows.len());
    for r in &later.rows {
        match merged.get(r.frames.as_slice()) {
            Some(&i) => {
                let row: &mut Row = &mut out.rows[i];
                row.counts += r.counts;
            }
            None => {
                merged.insert(r.frames.as_slice(), out.rows.len());
                out.rows.push(r.clone());
            }
        }
    }
    for row in &mut out.rows {
        if let Some(b) = before.get(row.frames.as_slice()) {
            row.counts.alloc_objects = (row.counts.alloc_objects - b.alloc_objects).max(0.0);
            row.counts.alloc_bytes = (row.counts.alloc_bytes - b.alloc_bytes).max(0.0);
        }
    }
    out.rows.retain(|r| {
        let c = r.counts;
        c.alloc_bytes >= 0.5 || c.alloc_objects >= 0.5 || c.live_bytes >= 0.5
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::parse::Format;

    fn profile(rows: &[(&[u64], [f64; 4])]) -> Profile {
        Profile {
            format: Format::HeapV2,
            sample_period: 0,
            rows: rows
                .iter()
                .map(|(f, c)| Row {
                    frames: f.to_vec(),
                    counts: Counts {
                        live_objects: c[0],
                        live_bytes: c[1],
                        alloc_objects: c[2],
                        alloc_bytes: c[3],
                    },
                })
                .collect(),
            mappings: Vec::new(),
            path: None,
            pid: Some(7),
        }
    }

    #[test]
    fn alloc_per_window_live_as_of_the_dump() {
        let a = profile(&[
            (&[1, 2], [1.0, 10.0, 5.0, 50.0]),
            (&[3], [0.0, 0.0, 2.0, 20.0]),
        ]);
        let b = profile(&[
            (&[1, 2], [2.0, 20.0, 9.0, 90.0]),
            (&[3], [0.0, 0.0, 2.0, 20.0]),
            (&[4], [1.0, 8.0, 1.0, 8.0]),
        ]);
        assert!(follows(&a, &b));
        let w = window(Some(&a), &b);
        let got: Vec<(Vec<u64>, [f64; 4])> = w
            .rows
            .iter()
            .map(|r| {
                let c = r.counts;
                (
                    r.frames.clone(),
                    [c.live_objects, c.live_bytes, c.alloc_objects, c.alloc_bytes],
                )
            })
            .collect();
        // Stack 3 allocated nothing in the window and holds nothing: dropped.
        assert_eq!(
            got,
            [
                (vec![1, 2], [2.0, 20.0, 4.0, 40.0]),
                (vec![4], [1.0, 8.0, 1.0, 8.0])
            ]
        );
        // The windows add up to the cumulative counts.
        let first = window(None, &a);
        assert_eq!(
            first.total().alloc_bytes + w.total().alloc_bytes,
            b.total().alloc_bytes
        );
        // A restarted process does not follow.
        let restarted = profile(&[(&[1, 2], [1.0, 10.0, 1.0, 10.0])]);
        assert!(!follows(&b, &restarted));
    }
}
