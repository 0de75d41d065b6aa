#!/usr/bin/env python3
"""Turns benches/results/<tag>-summary.csv (written by run.py) into SVG bar charts.

    python3 benches/workloads/plot.py [--tag workloads]

Writes benches/results/<tag>-speed.svg (glibc_time / x_time per workload and allocator, bigger is
better; "(cpu)" bars use the process's CPU time instead of the workload's own timer),
<tag>-memory.svg (x / glibc for the memory metrics, smaller is better) and <tag>-faults.svg (page
faults / glibc's, smaller is better), with a line at 1.0 (glibc). With --jvm-rss, instead: benches/results/jvm-rss.svg, the RSS over time of the
jvm-churn runs (benches/results/jvm-rss.csv), one line per allocator and repetition. Python 3
standard library only: the SVG is written by hand. run.py calls this at the
end of every suite run.
"""

import argparse
import csv
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(HERE), "results")
COLORS = {
    "glibc": "#888888", "jemalloc": "#4e79a7", "mimalloc": "#59a14f", "tcmalloc": "#f28e2b",
    "sampalloc": "#e15759", "sampalloc-prof": "#b07aa1", "jemalloc-prof": "#76b7b2",
}


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(groups, allocs, title, ylabel, log_scale, path):
    """groups: [(label, {alloc: ratio})]. Bars per group, one per allocator."""
    bar_w, gap = 11, 16
    left, top, bottom, right = 60, 50, 110, 20
    group_w = bar_w * len(allocs) + gap
    width = left + right + group_w * len(groups)
    height = 420
    plot_h = height - top - bottom
    vals = [v for _, d in groups for v in d.values() if v and v > 0]
    if not vals:
        return
    if log_scale:
        lo = min(0.5, min(vals)) / 1.2
        hi = max(2.0, max(vals)) * 1.2
        lo, hi = 2 ** math.floor(math.log2(lo)), 2 ** math.ceil(math.log2(hi))

        def y(v):
            v = min(max(v, lo), hi)
            return top + plot_h * (1 - (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)))
        ticks = []
        t = lo
        while t <= hi * 1.0001:
            ticks.append(t)
            t *= 2
    else:
        lo, hi = 0.0, max(1.5, max(vals) * 1.1)

        def y(v):
            return top + plot_h * (1 - (min(v, hi) - lo) / (hi - lo))
        step = 0.25 if hi <= 2 else 0.5 if hi <= 4 else 1 if hi <= 8 else 2
        ticks = [i * step for i in range(int(hi / step) + 1)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{esc(title)}</text>',
           f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
           f'text-anchor="middle">{esc(ylabel)}</text>']
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 4}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(1):.1f}" y2="{y(1):.1f}" stroke="black" '
               f'stroke-dasharray="4 3"/>')
    base = y(lo) if log_scale else y(0)
    for gi, (label, d) in enumerate(groups):
        x0 = left + gi * group_w + gap / 2
        for ai, a in enumerate(allocs):
            v = d.get(a)
            if v is None or v <= 0:
                continue
            x = x0 + ai * bar_w
            yt = y(v)
            out.append(f'<rect x="{x:.1f}" y="{min(yt, base):.1f}" width="{bar_w - 1}" '
                       f'height="{abs(base - yt):.1f}" fill="{COLORS.get(a, "#333")}">'
                       f'<title>{esc(label)} {esc(a)}: {v:.3f}</title></rect>')
        cx = x0 + bar_w * len(allocs) / 2
        out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="end" '
                   f'transform="rotate(-35 {cx:.1f} {top + plot_h + 12})">{esc(label)}</text>')
    finish_svg(out, allocs, left, path)


def finish_svg(out, allocs, left, path):
    """Adds the legend (one colour swatch per allocator, from `left`), closes the SVG and writes it."""
    lx = left
    for a in allocs:
        out.append(f'<rect x="{lx}" y="30" width="10" height="10" fill="{COLORS.get(a, "#333")}"/>')
        out.append(f'<text x="{lx + 13}" y="39">{esc(a)}</text>')
        lx += 16 + 7 * len(a) + 10
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def rss_chart(src, path):
    """Lines of RSS (MiB) over time (s), one per (allocator, repetition), from jvm-rss.csv."""
    with open(src) as f:
        rows = list(csv.DictReader(f))
    series = {}
    for r in rows:
        series.setdefault((r["allocator"], r["rep"]), []).append((float(r["t_s"]), int(r["rss_kb"]) / 1024))
    if not series:
        return False
    allocs = []
    for a, _ in series:
        if a not in allocs:
            allocs.append(a)
    width, height = 720, 420
    left, top, bottom, right = 60, 50, 50, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    t_hi = max(t for s in series.values() for t, _ in s)
    v_all = [v for s in series.values() for _, v in s if _ >= 2]
    v_lo = math.floor(min(v_all or [0]) / 50) * 50
    v_hi = math.ceil(max(v_all or [1]) * 1.02 / 50) * 50
    v_lo = min(v_lo, v_hi - 50)

    def x(t):
        return left + plot_w * t / t_hi

    def y(v):
        v = min(max(v, v_lo), v_hi)
        return top + plot_h * (1 - (v - v_lo) / (v_hi - v_lo))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
           f'{esc("jvm-churn: RSS over time (lower and flatter is better)")}</text>',
           f'<text x="14" y="{top + plot_h / 2}" transform="rotate(-90 14 {top + plot_h / 2})" '
           f'text-anchor="middle">RSS (MiB)</text>',
           f'<text x="{left + plot_w / 2}" y="{height - 10}" text-anchor="middle">seconds since start</text>']
    step = 50 if v_hi - v_lo <= 400 else 100
    v = v_lo
    while v <= v_hi:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    t_step = 5 if t_hi <= 40 else 10 if t_hi <= 120 else 30
    t = 0
    while t <= t_hi:
        out.append(f'<text x="{x(t):.1f}" y="{top + plot_h + 14}" text-anchor="middle">{t:g}</text>')
        t += t_step
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>')
    for (a, rep), pts in series.items():
        pts = sorted(pts)
        d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
        out.append(f'<polyline points="{d}" fill="none" stroke="{COLORS.get(a, "#333")}" stroke-width="1.5" '
                   f'opacity="0.85"><title>{esc(a)} rep {esc(rep)}</title></polyline>')
    finish_svg(out, allocs, left, path)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="workloads")
    ap.add_argument("--jvm-rss", action="store_true", help="plot jvm-rss.csv as jvm-rss.svg instead")
    args = ap.parse_args()
    if args.jvm_rss:
        p = os.path.join(RESULTS, "jvm-rss.svg")
        if rss_chart(os.path.join(RESULTS, "jvm-rss.csv"), p):
            print("wrote", os.path.relpath(p, os.path.dirname(os.path.dirname(HERE))))
        return
    src = os.path.join(RESULTS, f"{args.tag}-summary.csv")
    with open(src) as f:
        rows = list(csv.DictReader(f))
    allocs = []
    for r in rows:
        if r["allocator"] not in allocs:
            allocs.append(r["allocator"])
    speed, memory, faults = [], [], []
    for r in rows:
        if r["metric"] == "seconds":
            key, target = r["workload"], speed
        elif r["metric"] == "cpu_s":
            key, target = f'{r["workload"]} (cpu)', speed
        elif r["metric"] == "faults":
            key, target = r["workload"], faults
        elif r["metric"] == "anon_huge_kb":
            continue  # glibc has none to compare with: in the tables only
        else:
            key, target = f'{r["workload"]} {r["metric"].replace("_kb", "")}', memory
        if not target or target[-1][0] != key:
            target.append((key, {}))
        try:
            target[-1][1][r["allocator"]] = float(r["ratio"])
        except (TypeError, ValueError):
            pass
    written = []
    if speed:
        p = os.path.join(RESULTS, f"{args.tag}-speed.svg")
        chart(speed, allocs, "Speed relative to glibc (glibc time / time; higher is better)",
              "× glibc speed (log scale)", True, p)
        written.append(p)
    if memory:
        p = os.path.join(RESULTS, f"{args.tag}-memory.svg")
        chart(memory, allocs, "Memory relative to glibc (RSS / glibc RSS; lower is better)",
              "× glibc RSS (log scale)", True, p)
        written.append(p)
    if faults:
        p = os.path.join(RESULTS, f"{args.tag}-faults.svg")
        chart(faults, allocs, "Page faults relative to glibc (faults / glibc faults; lower is better)",
              "× glibc page faults (log scale)", True, p)
        written.append(p)
    for p in written:
        print("wrote", os.path.relpath(p, os.path.dirname(os.path.dirname(HERE))))


if __name__ == "__main__":
    main()
