//! The commands that read profiles: `top`, `diff`, `trend`, `flamegraph`, `pprof` and `stacks`.

use crate::{
    emit, euid, DiffArgs, ExplainArgs, ExportArgs, PprofArgs, SymArgs, TopArgs, TrendArgs,
};
use sampalloc::analysis::{
    self, flamegraph, parse, peek, pprof,
    report::{self, Measure, TopHeader},
    symbolize::Symbolizer,
    trend, GroupBy, ResolvedRow,
};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// Reads and symbolizes a profile, printing the symbolizer's warnings.
pub(crate) fn load(
    path: &Path,
    sym: &SymArgs,
) -> Result<(parse::Profile, Vec<ResolvedRow>), String> {
    let (profile, rows, _) = load_with_symbolizer(path, sym)?;
    Ok((profile, rows))
}

/// [`load`], keeping the symbolizer for more addresses of the same process.
fn load_with_symbolizer(
    path: &Path,
    sym: &SymArgs,
) -> Result<(parse::Profile, Vec<ResolvedRow>, Symbolizer), String> {
    let profile = parse::read(path)?;
    let mut s = Symbolizer::new(&profile, sym.perf_map.as_deref());
    let rows = analysis::resolve(&profile, &mut s);
    for w in s.take_warnings() {
        eprintln!("sampalloc: warning: {w}");
    }
    Ok((profile, rows, s))
}

fn group(lines: bool, stacks: bool) -> GroupBy {
    if stacks {
        GroupBy::Stack
    } else if lines {
        GroupBy::Line
    } else {
        GroupBy::Function
    }
}

/// `sampalloc top`.
pub(crate) fn top(a: TopArgs) -> Result<(), String> {
    let by = group(a.lines, a.stacks);
    let measure = if a.alloc {
        Measure::Alloc
    } else {
        Measure::Inuse
    };
    let (profile, rows, mut symbolizer) = load_with_symbolizer(&a.profile, &a.sym)?;
    let mut sites = analysis::sites(&rows, by);
    if let Some(base) = &a.base {
        let (_, base_rows) = load(base, &a.sym)?;
        sites = report::subtract(&sites, &analysis::sites(&base_rows, by));
    }
    report::rank(&mut sites, measure);
    let shown = a.profile.display().to_string();
    let base = a.base.as_ref().map(|b| b.display().to_string());
    let header = TopHeader {
        profile: &shown,
        base: base.as_deref(),
        sample_period: profile.sample_period,
    };
    let mut text = if a.json {
        report::top_json(&sites, measure, a.n, &header)
    } else {
        report::top_text(&sites, measure, a.n, &header)
    };
    if a.peek {
        let file = peek::read(&a.profile)?.ok_or_else(|| {
            format!(
                "no {}: the program ran without prof_peek (e.g. sampalloc run --conf prof_peek:64)",
                peek::side_path(&a.profile).display()
            )
        })?;
        let all_return = profile.first_frame_is_return_address();
        let peeks = peek::by_site(&file, all_return, &mut symbolizer, by, 100);
        for w in symbolizer.take_warnings() {
            eprintln!("sampalloc: warning: {w}");
        }
        let shown: Vec<&analysis::Site> = sites
            .iter()
            .filter(|s| measure.of(&s.counts).0.abs() >= 0.5)
            .take(if a.n == 0 { usize::MAX } else { a.n })
            .collect();
        if a.json {
            text = peek::add_to_json(&text, &peeks, a.peek_examples)?;
        } else {
            let source = peek::side_path(&a.profile).display().to_string();
            text.push_str(&peek::text(&shown, &peeks, &file, &source, a.peek_examples));
        }
    }
    emit(text.as_bytes())
}

/// `sampalloc diff`.
pub(crate) fn diff(a: DiffArgs) -> Result<(), String> {
    let by = group(a.lines, a.stacks);
    let (_, early) = load(&a.earlier, &a.sym)?;
    let (_, late) = load(&a.later, &a.sym)?;
    let entries = report::diff(&analysis::sites(&early, by), &analysis::sites(&late, by));
    let (e, l) = (
        a.earlier.display().to_string(),
        a.later.display().to_string(),
    );
    let text = if a.json {
        report::diff_json(&entries, a.n, &e, &l)
    } else {
        report::diff_text(&entries, a.n, &e, &l)
    };
    emit(text.as_bytes())
}

/// `sampalloc trend`. Consecutive profiles with the same memory map share one symbolizer.
pub(crate) fn trend(a: TrendArgs) -> Result<(), String> {
    let by = group(a.lines, false);
    let (files, note) = trend::series(&a.inputs, a.pid)?;
    if let Some(n) = note {
        eprintln!("sampalloc: note: {n}");
    }
    if files.len() < 2 {
        return Err(format!(
            "a trend needs at least two profiles, got {}",
            files.len()
        ));
    }
    let mut sym: Option<(Vec<parse::Mapping>, Symbolizer)> = None;
    let mut series = Vec::with_capacity(files.len());
    for f in &files {
        let profile = parse::read(f)?;
        if sym.as_ref().is_some_and(|(m, _)| *m != profile.mappings) {
            sym = None;
        }
        let (_, s) = sym.get_or_insert_with(|| {
            (
                profile.mappings.clone(),
                Symbolizer::new(&profile, a.sym.perf_map.as_deref()),
            )
        });
        let rows = analysis::resolve(&profile, s);
        for w in s.take_warnings() {
            eprintln!("sampalloc: warning: {w}");
        }
        let point = trend::point(f, profile.total().live_bytes, profile.sample_period);
        series.push((point, analysis::sites(&rows, by)));
    }
    let t = trend::build(series);
    if let Some(path) = &a.svg {
        let title = format!(
            "Live bytes of the top sites over {} profiles",
            t.points.len()
        );
        write_output(path, trend::svg(&t, 8, &title).as_bytes())?;
    }
    let text = if a.json {
        trend::json(&t, a.n)
    } else {
        trend::text(&t, a.n)
    };
    emit(text.as_bytes())
}

/// `sampalloc flamegraph`.
pub(crate) fn flame(a: ExportArgs) -> Result<(), String> {
    let (_, rows) = load(&a.profile, &a.sym)?;
    let name = a
        .profile
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{} bytes: {name}",
        if a.alloc { "Allocated" } else { "Live" }
    );
    let mut svg = Vec::new();
    flamegraph::write_svg(&rows, a.alloc, &title, &mut svg)?;
    emit(&svg)
}

/// `sampalloc pprof`.
pub(crate) fn export_pprof(a: PprofArgs) -> Result<(), String> {
    if a.output.is_none() && std::io::stdout().is_terminal() {
        return Err(
            "refusing to write binary data to a terminal: redirect (> heap.pb.gz) or use -o FILE"
                .to_string(),
        );
    }
    let data = if a.no_symbolize {
        pprof::gzip(&pprof::encode_unsymbolized(&parse::read(&a.profile)?))?
    } else {
        let (profile, rows) = load(&a.profile, &a.sym)?;
        pprof::encode_gzip(&profile, &rows)?
    };
    match &a.output {
        Some(p) => write_output(p, &data),
        None => emit(&data),
    }
}

/// Writes `pprof -o`'s file: never through a symlink (`O_NOFOLLOW`), and only into a regular
/// file of the user's own with no other hard link, so that a name planted in a shared
/// directory cannot redirect the write; a new file is created with mode 0600 (the export holds
/// the process's memory map). The user's own earlier output is replaced.
fn write_output(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let shown = path.display();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        // O_NONBLOCK: a FIFO without a reader fails instead of blocking (it is refused below).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => format!("refusing to write {shown}: it is a symlink"),
            _ => format!("cannot write {shown}: {e}"),
        })?;
    let m = f
        .metadata()
        .map_err(|e| format!("cannot write {shown}: {e}"))?;
    if !m.file_type().is_file() {
        return Err(format!("refusing to write {shown}: not a regular file"));
    }
    if m.uid() != euid() {
        return Err(format!(
            "refusing to write {shown}: owned by uid {}, not by you",
            m.uid()
        ));
    }
    if m.nlink() != 1 {
        return Err(format!(
            "refusing to write {shown}: it has other hard links"
        ));
    }
    f.set_len(0)
        .and_then(|_| f.write_all(data))
        .map_err(|e| format!("cannot write {shown}: {e}"))
}

/// `sampalloc stacks`.
pub(crate) fn stacks(a: ExportArgs) -> Result<(), String> {
    let (_, rows) = load(&a.profile, &a.sym)?;
    let mut out = String::new();
    for (stack, v) in analysis::collapsed(&rows, a.alloc) {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&v.to_string());
        out.push('\n');
    }
    emit(out.as_bytes())
}

/// `sampalloc explain`.
pub(crate) fn explain(a: ExplainArgs) -> Result<(), String> {
    let e = analysis::explain::explain(&a.profile, a.earlier.as_deref())?;
    let text = if a.json {
        analysis::explain::json(&e)
    } else {
        analysis::explain::text(&e)
    };
    emit(text.as_bytes())
}
