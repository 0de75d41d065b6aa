"""The workload suite's reports: medians and ratios to glibc per workload and metric, the cost of
profiling, the issue's targets, the JVM row's RSS table, and the Markdown summary. run.py calls
them on the rows the runners (runners.py) returned.
"""

import os
import platform
import statistics

from runners import JVM, JVM_FLAGS, JVM_SAMPLE_S, JVM_THREADS

# Time metrics (ratio glibc / x, bigger is better): the workload's own timer (wall clock of the
# measured phase) and the process's CPU time (user + system, from wait4). On a loaded machine the
# wall time also measures the scheduler's share; CPU time is steadier for single-threaded rows
# but counts spinning and the set-up and exit paths too.
SPEED_METRICS = ("seconds", "cpu_s")

# Memory metrics compared per workload (x / glibc, smaller is better).
MEMORY_METRICS = {
    "prodcons": ["peak_rss_kb"],
    "frag": ["peak_rss_kb", "final_rss_kb", "settled_rss_kb"],
    "rss1g": ["peak_rss_kb", "freed_rss_kb", "final_rss_kb"],
    "rounds": ["peak_rss_kb", "final_rss_kb", "settled_rss_kb"],
    "realloc": ["peak_rss_kb", "final_rss_kb"],
    "regrow": ["peak_rss_kb"],
    "larson": ["peak_rss_kb"],
    "churn": ["peak_rss_kb"],
    "bigloop": ["peak_rss_kb"],
    "batchq": ["peak_rss_kb"],
    "batchq-odd": ["peak_rss_kb"],
    "redis": ["peak_rss_kb"],
    "python3": ["peak_rss_kb"],
    "gcc": ["peak_rss_kb"],
    JVM: ["peak_rss_kb", "final_rss_kb"],
}

# Kernel figures recorded for every workload (x / glibc, smaller is better): page faults (minor +
# major, the whole process) and AnonHugePages at the end (KiB; C workloads only, absent elsewhere).
KERNEL_METRICS = ("faults", "anon_huge_kb")
PAGE_KB = 4  # the floor: one fault per 4 KiB page of peak RSS, for memory not in huge pages

# The targets for sampalloc: (row label, workload, metric, kind, bound, note).
# kind "speed": glibc_time / sampalloc_time >= bound; "memory": sampalloc / glibc <= bound;
# "prof": sampalloc-prof time / sampalloc time <= bound.
TARGETS = [
    ("small pairs >= 1.5x glibc (tcmalloc 1.45x)", "pairs", "seconds", "speed", 1.5),
    ("batches >= 5.4x glibc", "batches", "seconds", "speed", 5.4),
    ("realloc growth >= 1.0x glibc", "realloc", "seconds", "speed", 1.0),
    ("larson >= 1.6x glibc (mimalloc 1.56x)", "larson", "seconds", "speed", 1.6),
    ("producer/consumer >= 2.1x glibc (mimalloc 2.06x)", "prodcons", "seconds", "speed", 2.1),
    ("producer/consumer peak RSS <= 1.2x glibc", "prodcons", "peak_rss_kb", "memory", 1.2),
    ("fragmentation wall time <= 0.56x glibc", "frag", "seconds", "speed", 1 / 0.56),
    ("fragmentation RSS <= 0.41x glibc (final)", "frag", "final_rss_kb", "memory", 0.41),
    ("fragmentation RSS <= 0.41x glibc (settled, after 1.5 s)", "frag", "settled_rss_kb", "memory", 0.41),
    ("RSS after freeing 1 GiB <= 0.22x glibc", "rss1g", "final_rss_kb", "memory", 0.22),
    ("profiling (prof:true) <= 1% slower, geometric mean", "*", "seconds", "prof", 1.01),
    ("profiling <= 2% slower, geometric mean (issue 13)", "*", "seconds", "prof", 1.02),
    ("profiling <= 5% slower on churn (issue 13)", "churn", "seconds", "prof", 1.05),
    ("profiling <= 5% slower on producer/consumer (issue 13)", "prodcons", "seconds", "prof", 1.05),
]


# ---------------------------------------------------------------- the JVM row


def rss_at(series, t):
    """The sample nearest to t seconds (None when the run was shorter than t minus a sample)."""
    if not series or series[-1][0] < t - JVM_SAMPLE_S:
        return None
    return min(series, key=lambda s: abs(s[0] - t))[1]


def jvm_figures(samples, rows, allocs, seconds):
    """Per allocator, medians over repetitions: RSS at 2, 30, 60 s, peak, growth over the last
    half of the run (last sample before the end against the sample nearest the midpoint), ops/s
    and its ratio to glibc."""
    out = []
    glibc_ops = median_of(rows, JVM, "glibc", "ops_per_sec")[0]
    for aname, _, _ in allocs:
        per_rep = {}
        for s in samples:
            if s["allocator"] == aname:
                per_rep.setdefault(s["rep"], []).append((s["t_s"], s["rss_kb"]))
        fig = {"allocator": aname}
        for key, pick in (("rss_2s", lambda r: rss_at(r, 2)), ("rss_30s", lambda r: rss_at(r, 30)),
                          ("rss_60s", lambda r: rss_at(r, 60)), ("peak", lambda r: max(kb for _, kb in r)),
                          ("growth", lambda r: jvm_growth(r, seconds))):
            vals = [v for v in (pick(r) for r in per_rep.values() if r) if v is not None]
            fig[key] = statistics.median(vals) if vals else None
        ops = median_of(rows, JVM, aname, "ops_per_sec")[0]
        fig["ops_per_sec"] = ops
        fig["ops_ratio"] = ops / glibc_ops if ops and glibc_ops else None
        out.append(fig)
    return out


def jvm_growth(series, seconds):
    busy = [(t, kb) for t, kb in series if t <= seconds]
    if len(busy) < 3:
        return None
    mid = rss_at(busy, seconds / 2)
    return busy[-1][1] - mid


def jvm_table(figs, seconds, reps):
    mb = lambda kb: "–" if kb is None else f"{kb / 1024:.0f}"  # noqa: E731
    lines = [f"{JVM}: java {' '.join(JVM_FLAGS)} NativeChurn {seconds} {JVM_THREADS} (RSS in MiB, sampled "
             f"every {JVM_SAMPLE_S} s; medians of {reps} repetitions; growth: last busy sample − sample at "
             f"the midpoint)\n",
             "| allocator | RSS 2 s | RSS 30 s | RSS 60 s | peak | growth, last half | ops/s | ops/s × glibc |",
             "|---|---|---|---|---|---|---|---|"]
    for f in figs:
        g = "–" if f["growth"] is None else f"{f['growth'] / 1024:+.1f}"
        r = "–" if f["ops_ratio"] is None else f"{f['ops_ratio']:.2f}×"
        o = "–" if f["ops_per_sec"] is None else f"{f['ops_per_sec']:.0f}"
        lines.append(f"| {f['allocator']} | {mb(f['rss_2s'])} | {mb(f['rss_30s'])} | {mb(f['rss_60s'])} | "
                     f"{mb(f['peak'])} | {g} | {o} | {r} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- summary


def fnum(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def median_of(rows, wl, alloc, metric):
    vals = [fnum(r.get(metric)) for r in rows
            if r["workload"] == wl and r["allocator"] == alloc and r.get("status") == "ok"]
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    if not xs:
        return None
    p = 1.0
    for x in xs:
        p *= x
    return p ** (1 / len(xs))


def metrics_of(rows, wl):
    """The metrics summarized for a workload: time, its memory metrics, and the kernel figures
    that at least one of its runs recorded."""
    kernel = [m for m in KERNEL_METRICS if any(r["workload"] == wl and fnum(r.get(m)) is not None for r in rows)]
    return ["seconds", "cpu_s"] + MEMORY_METRICS.get(wl, []) + kernel


def summarize(rows, allocs, workloads):
    names = [a[0] for a in allocs]
    summary = []  # dicts: workload, metric, allocator, median, ratio, spread
    for wl in workloads:
        for metric in metrics_of(rows, wl):
            base, _ = median_of(rows, wl, "glibc", metric)
            for a in names:
                med, vals = median_of(rows, wl, a, metric)
                ratio = None
                if med is not None and base:
                    ratio = base / med if metric in SPEED_METRICS else med / base
                spread = (max(vals) - min(vals)) / med if vals and med else None
                failed = sum(1 for r in rows if r["workload"] == wl and r["allocator"] == a
                             and r.get("status") not in (None, "ok"))
                summary.append({"workload": wl, "metric": metric, "allocator": a, "median": med,
                                "ratio": ratio, "spread": spread, "runs": len(vals), "failed": failed})
    return summary


def prof_costs(rows, workloads, base="sampalloc"):
    """Per workload: median over repetitions of (`base`-prof time / `base` time), each pair
    taken from the same repetition (adjacent runs); for the workload's timer and for CPU time."""
    out = {}
    prof = base + "-prof"
    for wl in workloads:
        if wl in ("rss1g",):
            continue
        res = []
        for metric in SPEED_METRICS:
            by_rep = {}
            for r in rows:
                if r["workload"] == wl and r.get("status") == "ok" and r["allocator"] in (base, prof):
                    by_rep.setdefault(r["rep"], {})[r["allocator"]] = fnum(r.get(metric))
            pairs = [v[prof] / v[base] for v in by_rep.values() if v.get(base) and v.get(prof)]
            res.append(statistics.median(pairs) if pairs else None)
        if res[0] is not None:
            out[wl] = tuple(res)
    return out


def fmt(v, digits=3):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}" if abs(v) < 100 else f"{v:.0f}"


def fcount(v):
    """A count for reading: 840, 2.2 k, 274 k, 4.2 M."""
    if v is None:
        return "–"
    if v < 1000:
        return f"{v:.0f}"
    if v < 10_000:
        return f"{v / 1000:.1f} k"
    if v < 1_000_000:
        return f"{v / 1000:.0f} k"
    return f"{v / 1e6:.1f} M"


def faults_table(rows, allocs, workloads):
    """Page faults per workload and allocator (medians), with the ratio to glibc and the multiple of
    the floor: one fault per 4 KiB page of the allocator's own median peak RSS. Below 1× floor means
    memory faulted in more than a page at a time (transparent huge pages)."""
    names = [a[0] for a in allocs]
    lines = ["Page faults (minor + major, the whole process, from its rusage; medians). `(x×)` is the "
             "ratio to glibc, smaller is better; `floor×k`: faults per 4 KiB page of that allocator's own "
             "median peak RSS (1 = each page faulted in once; below 1 = memory faulted in by huge pages; "
             "jvm-churn counts the whole run, the pre-touched Java heap included).\n",
             "| workload | " + " | ".join(names) + " |", "|" + "---|" * (1 + len(names))]
    ratios = {a: [] for a in names}
    for wl in workloads:
        base, _ = median_of(rows, wl, "glibc", "faults")
        cells = []
        for a in names:
            med, _ = median_of(rows, wl, a, "faults")
            if med is None:
                cells.append("–")
                continue
            cell = fcount(med)
            if a != "glibc" and base:
                ratios[a].append(med / base)
                cell += f" (**{med / base:.2f}×**)"
            peak, _ = median_of(rows, wl, a, "peak_rss_kb")
            if peak:
                cell += f" floor×{med / (peak / PAGE_KB):.2g}"
            cells.append(cell)
        if any(c != "–" for c in cells):
            lines.append(f"| {wl} | " + " | ".join(cells) + " |")
    g = [geomean(ratios[a]) for a in names]
    lines.append("| geometric mean × glibc | " + " | ".join("–" if a == "glibc" or x is None else f"**{x:.2f}×**"
                                                         for a, x in zip(names, g)) + " |")
    return "\n".join(lines) + "\n"


# Issue 13's bars against the peers: time and peak RSS within 10 % of the best peer's, page
# faults within 1.2x; the peers are whichever of these the run has.
PEERS = ("glibc", "jemalloc", "mimalloc", "tcmalloc")
PEER_BOUNDS = (("seconds", 1.10), ("peak_rss_kb", 1.10), ("faults", 1.20))


def find_summary(summary, wl, metric, allocator):
    """The summary entry of `allocator` for `metric` of workload `wl`, or None."""
    return next((x for x in summary if x["workload"] == wl and x["metric"] == metric
                 and x["allocator"] == allocator), None)


def peer_table(summary, workloads, name="sampalloc"):
    """Per workload, `name` against the best of the peers in the run: its median over the best
    peer's for the workload's timer, peak RSS and page faults, and whether that is within the
    bound. Empty when the run has no peer or no `name`."""
    def median(wl, metric, a):
        s = find_summary(summary, wl, metric, a)
        return s["median"] if s else None

    rows = []
    for wl in workloads:
        cells = []
        for metric, bound in PEER_BOUNDS:
            ours = median(wl, metric, name)
            peers = [(median(wl, metric, p), p) for p in PEERS]
            peers = [(v, p) for v, p in peers if v]
            if not ours or not peers:
                cells.append("–")
                continue
            best, who = min(peers)
            ratio = ours / best
            cells.append(f"{ratio:.2f}× {who}" + (" met" if ratio <= bound else " **missed**"))
        if any(c != "–" for c in cells):
            rows.append(f"| {wl} | " + " | ".join(cells) + " |")
    if not rows:
        return ""
    head = [f"{name} against the best peer ({', '.join(PEERS)}, whichever ran), medians: time and "
            "peak RSS within 1.10×, page faults within 1.20× (issue 13).\n",
            "| workload | time | peak RSS | page faults |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n"


def render(summary, allocs, workloads, profc, je_profc, targets_for, notes, tables=()):
    names = [a[0] for a in allocs]
    lines = []
    lines.append("Medians over repetitions; `ratio` is to glibc: speed (seconds rows) as "
                 "glibc_time / x_time, bigger is better (`seconds`: the workload's own timer; `cpu_s`: the "
                 "process's user + system CPU time); memory as x / glibc, smaller is better (`faults`: page "
                 "faults, minor + major; `anon_huge_kb`: AnonHugePages, anonymous memory in transparent huge "
                 "pages when the workload printed its result; no ratio where glibc has none). "
                 "`±` is the spread (max − min) / median of the runs.\n")
    head = "| workload | metric | " + " | ".join(names) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (2 + len(names)))
    for wl in workloads:
        metrics = []
        for x in summary:
            if x["workload"] == wl and x["metric"] not in metrics:
                metrics.append(x["metric"])
        for metric in metrics:
            cells = []
            for a in names:
                s = find_summary(summary, wl, metric, a)
                if not s or s["median"] is None:
                    cells.append("failed" if s and s["failed"] else "–")
                    continue
                if metric in SPEED_METRICS:
                    cell = f"{fmt(s['median'])}s"
                elif metric == "faults":
                    cell = fcount(s["median"])
                else:
                    cell = f"{fmt(s['median'] / 1024)} MiB"
                if a != "glibc" and s["ratio"] is not None:
                    cell += f" (**{s['ratio']:.2f}×**)"
                if metric in SPEED_METRICS and s["spread"] is not None:
                    cell += f" ±{100 * s['spread']:.0f}%"
                if s["failed"]:
                    cell += f" [{s['failed']} failed]"
                cells.append(cell)
            lines.append(f"| {wl} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
    for t in tables:
        lines.append(t)
    if profc:
        lines.append("Cost of profiling (`prof:true`, default sample interval, vs `prof:false`): "
                     "median over repetitions of the paired time ratio sampalloc-prof / sampalloc; "
                     "jemalloc's own profiler (jemalloc-prof / jemalloc, same interval) beside it.\n")
        lines.append("| workload | sampalloc (timer) | (CPU time) | jemalloc (timer) | (CPU time) |")
        lines.append("|---|---|---|---|---|")

        def pc(c):
            return "–" if c is None else f"{c:.3f} ({100 * (c - 1):+.1f} %)"
        for wl, (c, cc) in profc.items():
            jc, jcc = je_profc.get(wl, (None, None))
            lines.append(f"| {wl} | {pc(c)} | {pc(cc)} | {pc(jc)} | {pc(jcc)} |")
        g = geomean([c for c, _ in profc.values()])
        gc = geomean([cc for _, cc in profc.values() if cc])
        jg = geomean([c for c, _ in je_profc.values()])
        jgc = geomean([cc for _, cc in je_profc.values() if cc])
        lines.append(f"| geometric mean | {pc(g)} | {pc(gc)} | {pc(jg)} | {pc(jgc)} |")
        lines.append("")
    if targets_for:
        lines.append("Targets (sampalloc):\n")
        lines.append("| target | measured | verdict |")
        lines.append("|---|---|---|")
        for label, measured, verdict in targets_for:
            lines.append(f"| {label} | {measured} | {verdict} |")
        lines.append("")
    for n in notes:
        lines.append(n)
    return "\n".join(lines)


def check_targets(summary, profc):
    out = []
    for label, wl, metric, kind, bound in TARGETS:
        if kind == "prof":
            costs = profc.values() if wl == "*" else [profc[wl]] if wl in profc else []
            g = geomean([c for c, _ in costs])
            gc = geomean([cc for _, cc in costs if cc])
            if g is None:
                continue
            shown = f"{100 * (g - 1):+.1f} %" + (f"; by CPU time {100 * (gc - 1):+.1f} %" if gc else "")
            out.append((label, shown, "met" if g <= bound else "**missed**"))
            continue
        s = find_summary(summary, wl, metric, "sampalloc")
        if not s or s["ratio"] is None:
            continue
        if kind == "speed":
            shown = f"{s['ratio']:.2f}× glibc speed" + (f" (time {1 / s['ratio']:.2f}× glibc)" if wl == "frag" else "")
            c = find_summary(summary, wl, "cpu_s", "sampalloc")
            if c and c["ratio"] is not None:
                shown += f"; by CPU time {c['ratio']:.2f}×"
            ok = s["ratio"] >= bound
        else:
            shown = f"{s['ratio']:.2f}× glibc"
            ok = s["ratio"] <= bound
        out.append((label, shown, "met" if ok else "**missed**"))
    return out


def machine_note(reps):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = ["?"]
    thp = []
    for knob in ("enabled", "defrag"):
        try:
            with open(f"/sys/kernel/mm/transparent_hugepage/{knob}") as f:
                mode = f.read().split("[", 1)[1].split("]", 1)[0]
        except (OSError, IndexError):
            mode = "?"
        thp.append(f"{knob} {mode}")
    return (f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"transparent huge pages: {', '.join(thp)}; "
            f"load average at the end {' '.join(load)}; {reps} repetitions, interleaved.")
