//! Flame graphs of live (or allocated) bytes as SVG, drawn by `inferno` from collapsed stacks.

use super::{collapsed, ResolvedRow};
use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};

/// Writes an SVG flame graph of `rows` (live bytes, or allocated bytes if `alloc`) to `out`.
pub fn write_svg(
    rows: &[ResolvedRow],
    alloc: bool,
    title: &str,
    out: &mut dyn std::io::Write,
) -> Result<(), String> {
    let mut lines: Vec<String> = collapsed(rows, alloc)
        .into_iter()
        .map(|(stack, v)| format!("{stack} {v}"))
        .collect();
    if lines.is_empty() {
        // inferno refuses empty input; draw an empty graph instead.
        lines.push("[no live memory] 1".to_string());
    }
    let mut opts = Options::default();
    opts.title = title.to_string();
    opts.count_name = "bytes".to_string();
    opts.colors = Palette::Basic(BasicPalette::Mem);
    opts.deterministic = true;
    flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
        .map_err(|e| format!("cannot write the flame graph: {e}"))
}
