//! What live sampled blocks hold: the side file `<profile>.peek` that `prof_peek:N` writes
//! beside each profile (the first N bytes of every sampled block still live at the dump, with
//! its stack), read and grouped by site, each block shown as `strings` would show it.
//!
//! ```text
//! sampalloc peek 1
//! peek_bytes 64
//! block 0x7f3e1000a000 0x7f3e2c0000c0 4096 4a4e492d4c45414b2d4d41524b4552…
//! stack 0x7f3e2c0000c0 @ 0x55d0c1a2b3c4 0x55d0c1a2b100 0x7f3e12a29d90
//! ```

use super::symbolize::Symbolizer;
use super::{resolve_stack, site_key, GroupBy, Site};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One sampled block's first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Its address in the process.
    pub addr: u64,
    /// The id of its stack (a key of [`PeekFile::stacks`]).
    pub stack: u64,
    /// Its requested size.
    pub size: u64,
    /// Its first bytes (empty if they could not be read).
    pub data: Vec<u8>,
}

/// A `.peek` side file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeekFile {
    /// How many bytes of each block were asked for (`prof_peek`).
    pub peek_bytes: usize,
    /// The blocks, each address once.
    pub blocks: Vec<Block>,
    /// Stack id → raw addresses, innermost first, as in the profile's rows.
    pub stacks: HashMap<u64, Vec<u64>>,
}

/// The side file of `profile`: `<profile>.peek`.
pub fn side_path(profile: &Path) -> PathBuf {
    let mut s = profile.as_os_str().to_owned();
    s.push(".peek");
    PathBuf::from(s)
}

fn hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the text of a `.peek` file. A block listed twice (the set changed while the dump
/// walked it) is kept once.
pub fn parse(text: &str) -> Result<PeekFile, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, "sampalloc peek 1")) => {}
        _ => return Err("not a sampalloc peek file (no 'sampalloc peek 1' line)".to_string()),
    }
    let mut f = PeekFile::default();
    let mut seen = HashSet::new();
    for (i, line) in lines {
        let bad = || format!("line {}: cannot read {line:?}", i + 1);
        let mut w = line.split_ascii_whitespace();
        match w.next() {
            Some("peek_bytes") => {
                f.peek_bytes = w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            }
            Some("block") => {
                let addr = w.next().and_then(hex_u64).ok_or_else(bad)?;
                let stack = w.next().and_then(hex_u64).ok_or_else(bad)?;
                let size = w.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let data = hex_bytes(w.next().unwrap_or("")).ok_or_else(bad)?;
                if seen.insert(addr) {
                    f.blocks.push(Block {
                        addr,
                        stack,
                        size,
                        data,
                    });
                }
            }
            Some("stack") => {
                let id = w.next().and_then(hex_u64).ok_or_else(bad)?;
                if w.next() != Some("@") {
                    return Err(bad());
                }
                let frames: Option<Vec<u64>> = w.map(hex_u64).collect();
                f.stacks.insert(id, frames.ok_or_else(bad)?);
            }
            None => {}
            Some(_) => {} // later additions
        }
    }
    Ok(f)
}

/// Reads the side file of `profile`; `None` if there is none (`prof_peek` was off).
pub fn read(profile: &Path) -> Result<Option<PeekFile>, String> {
    let path = side_path(profile);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The runs of at least `min` printable characters in `data`, as `strings` finds them
/// (printable ASCII and tab).
pub fn strings(data: &[u8], min: usize) -> Vec<String> {
    data.split(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
        .filter(|run| run.len() >= min.max(1))
        .map(|run| String::from_utf8_lossy(run).into_owned())
        .collect()
}

/// What a block shows: its strings of 4 or more, joined by a space, cut to `width` characters.
pub fn preview(data: &[u8], width: usize) -> String {
    let joined = strings(data, 4).join(" ");
    if joined.chars().count() > width {
        let mut s: String = joined.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    } else {
        joined
    }
}

/// The peeked blocks of one site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SitePeek {
    /// Blocks peeked.
    pub blocks: usize,
    /// Distinct previews with the number of blocks showing each, most frequent first (an
    /// empty preview: no printable run).
    pub previews: Vec<(String, usize)>,
}

/// Groups the blocks of `file` by the site (key, as [`super::sites`] gives it when grouping
/// `by`) their stack belongs to. `all_return`: as the profile's
/// [`super::parse::Profile::first_frame_is_return_address`].
pub fn by_site(
    file: &PeekFile,
    all_return: bool,
    sym: &mut Symbolizer,
    by: GroupBy,
    width: usize,
) -> HashMap<String, SitePeek> {
    let mut keys: HashMap<u64, String> = HashMap::new();
    let mut counts: HashMap<String, (usize, HashMap<String, usize>)> = HashMap::new();
    for b in &file.blocks {
        let key = keys
            .entry(b.stack)
            .or_insert_with(|| {
                let frames = file.stacks.get(&b.stack).map_or(&[][..], Vec::as_slice);
                site_key(&resolve_stack(frames, all_return, sym), by)
            })
            .clone();
        let e = counts.entry(key).or_default();
        e.0 += 1;
        *e.1.entry(preview(&b.data, width)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, (blocks, p))| {
            let mut previews: Vec<(String, usize)> = p.into_iter().collect();
            previews.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            (k, SitePeek { blocks, previews })
        })
        .collect()
}

/// The `top --peek` section: for each of `shown` (in order) that has peeked blocks, up to
/// `per_site` distinct previews.
pub fn text(
    shown: &[&Site],
    peeks: &HashMap<String, SitePeek>,
    file: &PeekFile,
    source: &str,
    per_site: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nPeek: first {} bytes of {} live sampled blocks ({source}), as strings of 4+ printable characters:",
        file.peek_bytes,
        file.blocks.len()
    );
    let mut any = false;
    for s in shown {
        let Some(p) = peeks.get(&s.key) else {
            continue;
        };
        any = true;
        let name = if s.location.is_empty() {
            s.function.clone()
        } else {
            format!("{} ({})", s.function, s.location)
        };
        let _ = writeln!(
            out,
            "{name}: {} block{}",
            p.blocks,
            if p.blocks == 1 { "" } else { "s" }
        );
        for (text, n) in p.previews.iter().take(per_site) {
            if text.is_empty() {
                let _ = writeln!(out, "  {n:>6}x  (no printable run)");
            } else {
                let _ = writeln!(out, "  {n:>6}x  {text:?}");
            }
        }
        if p.previews.len() > per_site {
            let _ = writeln!(
                out,
                "          ({} more previews)",
                p.previews.len() - per_site
            );
        }
    }
    if !any {
        let _ = writeln!(out, "(no peeked block belongs to the sites shown)");
    }
    out
}

/// Adds to each site of `top --json`'s output that has peeked blocks a `peek` object:
/// `{"blocks": N, "previews": [{"text": …, "blocks": N}, …]}` (at most `per_site` previews).
pub fn add_to_json(
    json: &str,
    peeks: &HashMap<String, SitePeek>,
    per_site: usize,
) -> Result<String, String> {
    let mut v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("internal: top JSON: {e}"))?;
    if let Some(sites) = v.get_mut("sites").and_then(|s| s.as_array_mut()) {
        for site in sites {
            let Some(p) = site
                .get("key")
                .and_then(|k| k.as_str())
                .and_then(|k| peeks.get(k))
            else {
                continue;
            };
            let previews: Vec<serde_json::Value> = p
                .previews
                .iter()
                .take(per_site)
                .map(|(t, n)| serde_json::json!({ "text": t, "blocks": n }))
                .collect();
            site["peek"] = serde_json::json!({ "blocks": p.blocks, "previews": previews });
        }
    }
    Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_runs_of_four_or_more_printable_characters() {
        let data = b"\x00\x01JNI-LEAK-MARKER\x00abc\x00\x7fabcd\ttab\xffZZZZZ\n\x80ok";
        assert_eq!(
            strings(data, 4),
            vec!["JNI-LEAK-MARKER", "abcd\ttab", "ZZZZZ"]
        );
        assert_eq!(strings(b"abc", 4), Vec::<String>::new());
        assert_eq!(strings(b"", 4), Vec::<String>::new());
        assert_eq!(strings(b"wxyz", 4), vec!["wxyz"]);
        assert_eq!(strings(b"\xe2\x82\xacuro", 4), Vec::<String>::new());
        assert_eq!(preview(b"key=secret\x00value", 8), "key=sec…");
        assert_eq!(preview(b"key=secret\x00value", 80), "key=secret value");
    }

    #[test]
    fn parses_blocks_and_stacks_and_keeps_each_address_once() {
        let text = "sampalloc peek 1\npeek_bytes 8\n\
            block 0x1000 0xaa 4096 4142434445464748\n\
            block 0x2000 0xaa 16 \n\
            block 0x1000 0xaa 4096 4142434445464748\n\
            stack 0xaa @ 0x401000 0x402000\n";
        let f = parse(text).unwrap();
        assert_eq!(f.peek_bytes, 8);
        assert_eq!(f.blocks.len(), 2);
        assert_eq!(f.blocks[0].data, b"ABCDEFGH");
        assert_eq!(f.blocks[1].data, b"");
        assert_eq!(f.stacks[&0xaa], vec![0x401000, 0x402000]);
        assert!(parse("heap profile: 1: 2 [3: 4] @ heap_v2/1\n").is_err());
        assert!(parse("sampalloc peek 1\nblock 0x1 0x2 3 4g\n").is_err());
    }
}
