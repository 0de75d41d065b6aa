#!/usr/bin/env python3
"""The multi-threaded workload suite: every workload under every allocator, interleaved.

Run from anywhere (the repository is found from this file's location):

    benches/workloads/run.sh                  # build, run the C workloads, 5 repetitions
    benches/workloads/run.sh --real           # ... and the real programs (redis, python3, gcc)
    benches/workloads/run.sh --reps 3 --only larson,prodcons --allocators glibc,sampalloc
    benches/workloads/run.sh --allocators glibc,tcmalloc,sampalloc,mimalloc3=/opt/peers/libmimalloc.so

--allocators takes a comma-separated list of the names below and of `name=/path/to/lib.so`
entries: a preload library built outside the project (say mimalloc 3 or snmalloc's
libsnmallocshim.so, built from their release tags as benches/RESULTS.md describes), run like the
packaged peers under the name given (no environment of its own; also in the jvm-churn row).

What it does:
1. builds sampalloc's preload (`cargo build --release -p sampalloc-preload`,
   target/release/libsampalloc.so), the C workloads of this directory (`cc -O2 -pthread`, into
   target/workloads/) and the empty library of preload_floor.c;
2. finds libjemalloc.so.2, libmimalloc.so.2 and libtcmalloc_minimal.so.4 (`ldconfig -p`, then the
   multiarch directory); when one is missing it leaves that allocator out and says to run
   benches/workloads/setup.sh, which installs them (and, with --real and --jvm, what those rows
   run) with apt-get. Nothing here installs anything;
3. runs each workload under each configuration — glibc (no preload), preload-floor (glibc with an
   empty library preloaded, preload_floor.c: the faults any preloaded allocator starts from, a
   reference, not a peer), jemalloc, mimalloc, tcmalloc,
   sampalloc (`SAMPALLOC_CONF=prof:false`), sampalloc-prof (`prof:true`, default sample
   interval), sampalloc-thp (`prof:false,thp:always`: segments in huge pages too; only when
   asked for) and jemalloc-prof (`MALLOC_CONF=prof:true`: jemalloc's own profiler at the same
   512 KiB mean interval, the yardstick for the cost of profiling), and any `name=/path` entry —
   interleaved: for each workload, each repetition runs every configuration once, in an order
   shuffled anew for each repetition (seeded, so reruns use the same orders), so that slow
   phases of a shared machine and what the previous process left behind (the kernel's free huge
   pages) fall on every allocator alike; every
   run records its wall and CPU time, peak RSS, page faults (minor + major, from the process's
   rusage) and, for the C workloads, AnonHugePages (anonymous memory in transparent huge pages,
   read by the program from /proc/self/smaps_rollup when it prints its result);
4. writes benches/results/workloads.csv (one row per run), benches/results/workloads-summary.csv
   and benches/results/workloads-summary.md (medians; ratios to glibc: speed as glibc_time/x_time,
   bigger is better; memory as x/glibc, smaller is better; the issue's targets marked met/missed;
   the cost of profiling as sampalloc-prof time / sampalloc time, and jemalloc-prof / jemalloc
   beside it; a page-fault table with ratios to glibc and each allocator's faults per 4 KiB page
   of its peak RSS, the floor for memory faulted in 4 KiB at a time; AnonHugePages; sampalloc
   against the best peer in the run, per workload, for time, peak RSS and page faults, with
   issue 13's bounds of 1.10x, 1.10x and 1.20x), and prints the summary;
5. with --real, the same for real programs: redis-server on 127.0.0.1 (a free port, no
   persistence) driven by redis-benchmark, a python3 JSON/dict workload, and gcc -O2 on a
   generated C file; and checks with `SAMPALLOC_CONF=stats_print:true` that sampalloc really
   serves redis-server's allocations (Debian's redis links jemalloc itself);
6. when java and javac are installed, the jvm-churn row: tests/preload/NativeChurn.java (16 threads
   looping GZIP round trips and Unsafe.allocateMemory/freeMemory of 16 B-1 MiB blocks, issue 20)
   in a JVM with a fixed, pre-touched heap, for --jvm-seconds (default 60) under glibc, jemalloc,
   mimalloc, tcmalloc and sampalloc, interleaved; VmRSS is sampled every 2 s into
   benches/results/jvm-rss.csv (plotted as jvm-rss.svg), and the summary gives RSS at 2, 30 and
   60 s, the peak, the growth over the last half and ops/s against glibc. Its `seconds` and `cpu_s`
   are per 1000 loop iterations, so their ratios are the ops/s ratios.

Python 3 standard library only. This file is the entry point (the command line and the order of
things); the building, discovery and runs are in runners.py, the summary, targets and tables in
report.py. Each run has a timeout; redis is shut down (or killed) on any failure. Plots:
benches/workloads/plot.py (run at the end automatically).
"""

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time

from report import (check_targets, faults_table, fnum, jvm_figures, jvm_table, machine_note, peer_table, prof_costs, render,
                    summarize)
from runners import (HERE, JVM, JVM_ALLOCATORS, KNOWN_ALLOCATORS, ROOT, WORKLOADS, CSV_FIELDS, build,
                     find_allocators, jvm_build, jvm_run, kill_live, log, real_run, redis_run, redis_stats_check,
                     rotated, run_workload)

RESULTS = os.path.join(ROOT, "benches", "results")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per configuration (default 5)")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--allocators",
                    default="glibc,preload-floor,jemalloc,mimalloc,tcmalloc,sampalloc,sampalloc-prof,jemalloc-prof",
                    help="comma-separated: glibc, preload-floor, jemalloc, mimalloc, tcmalloc, sampalloc, "
                         "sampalloc-prof, sampalloc-thp, jemalloc-prof, and name=/path/to/lib.so for a preload "
                         "library built elsewhere (default: all the named ones but sampalloc-thp)")
    ap.add_argument("--real", action="store_true", help="also run redis, python3 and gcc")
    ap.add_argument("--real-only", action="store_true", help="run only the real programs")
    ap.add_argument("--no-cargo", action="store_true", help="use the existing target/release/libsampalloc.so")
    ap.add_argument("--tag", default="workloads", help="basename of the result files (default workloads)")
    ap.add_argument("--jvm-seconds", type=int, default=60, help=f"length of the {JVM} runs (default 60)")
    args = ap.parse_args()

    so = build(args.no_cargo)
    allocs = find_allocators(so, args.allocators.split(","))
    names = [a[0] for a in allocs]
    log("== allocators: " + ", ".join(f"{n}={os.path.basename(p) if p else '(none)'}"
                                      + (f" {e}" if e else "") for n, p, e in allocs))
    workloads = [] if args.real_only else (args.only.split(",") if args.only else list(WORKLOADS))
    real = [] if not (args.real or args.real_only) else ["redis", "python3", "gcc"]
    if args.only and (args.real or args.real_only):
        real = [w for w in real if w in args.only.split(",")] or real
    classes = None
    if JVM in workloads or not args.only and not args.real_only:
        workloads = [w for w in workloads if w != JVM]
        classes = jvm_build()
        if classes:
            workloads.append(JVM)
        else:
            log(f"== java or javac not found: {JVM} left out (benches/workloads/setup.sh --jvm installs a JDK)")
    for w in workloads:
        if w not in WORKLOADS and w != JVM:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}, {JVM}")
    jvm_allocs = [a for a in allocs if a[0] in JVM_ALLOCATORS or a[0] not in KNOWN_ALLOCATORS]
    jvm_samples = []
    if real:
        for tool in ("redis-server", "redis-benchmark", "redis-cli", "gcc"):
            if not shutil.which(tool):
                log(f"== {tool} not found: benches/workloads/setup.sh --real installs redis-server, redis-tools and gcc; skipping redis")
                real = [w for w in real if w != "redis"] if tool.startswith("redis") else real

    rows = []
    notes = []
    t_start = time.monotonic()
    try:
        for wl in workloads + real:
            log(f"== {wl}")
            for rep in range(1, args.reps + 1):
                for alloc in rotated(jvm_allocs if wl == JVM else allocs, rep - 1):
                    if wl == JVM:
                        row = jvm_run(classes, alloc, rep, args.jvm_seconds, jvm_samples)
                    elif wl == "redis":
                        row, _ = redis_run(alloc, rep)
                    elif wl in ("python3", "gcc"):
                        row = real_run(wl, alloc, rep)
                    else:
                        row = run_workload(wl, alloc, rep)
                    rows.append(row)
                s = "  ".join(f"{r['allocator']}={fnum(r.get('seconds')) or 0:.3f}s" for r in rows
                              if r["workload"] == wl and r["rep"] == rep)
                log(f"   rep {rep}: {s}")
        if "redis" in real:
            verdict = redis_stats_check(allocs)
            notes.append(f"Does sampalloc serve redis-server (Debian's links libjemalloc.so.2)? {verdict}")
            log("== redis under sampalloc with stats_print:true: " + verdict)
    finally:
        kill_live()

    os.makedirs(RESULTS, exist_ok=True)
    raw = os.path.join(RESULTS, f"{args.tag}.csv")
    with open(raw, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    all_wl = workloads + real
    summary = summarize(rows, allocs, all_wl)
    with open(os.path.join(RESULTS, f"{args.tag}-summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["workload", "metric", "allocator", "median", "ratio", "spread", "runs", "failed"])
        w.writeheader()
        for s in summary:
            w.writerow(s)
    profc = prof_costs(rows, all_wl) if "sampalloc-prof" in names and "sampalloc" in names else {}
    targets = check_targets(summary, profc) if "glibc" in names and "sampalloc" in names else []
    notes.insert(0, machine_note(args.reps) + f" Suite time {time.monotonic() - t_start:.0f} s.")
    # name=/path/to/lib.so entries are shown as name=…/lib.so: no machine paths in the results
    args_shown = [re.sub(r"(^|,)([^,=]+)=[^,]*/([^,/]+)", r"\1\2=…/\3", a) for a in sys.argv[1:]]
    cmd = "benches/workloads/run.sh " + " ".join(args_shown)
    notes.insert(1, f"Command: `{cmd.strip()}`")
    je_profc = prof_costs(rows, all_wl, "jemalloc") if "jemalloc-prof" in names and "jemalloc" in names else {}
    if JVM in all_wl:
        with open(os.path.join(RESULTS, "jvm-rss.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["allocator", "rep", "t_s", "rss_kb"])
            w.writeheader()
            for r in jvm_samples:
                w.writerow(r)
        notes.append(jvm_table(jvm_figures(jvm_samples, rows, jvm_allocs, args.jvm_seconds),
                               args.jvm_seconds, args.reps))
    tables = [faults_table(rows, allocs, all_wl), peer_table(summary, all_wl)]
    text = render(summary, allocs, all_wl, profc, je_profc, targets, notes, [t for t in tables if t])
    with open(os.path.join(RESULTS, f"{args.tag}-summary.md"), "w") as f:
        f.write(text + "\n")
    log("\n" + text)
    plot = os.path.join(HERE, "plot.py")
    if os.path.exists(plot):
        subprocess.run([sys.executable, plot, "--tag", args.tag])
        if JVM in all_wl:
            subprocess.run([sys.executable, plot, "--jvm-rss"])
    log(f"\n== wrote {os.path.relpath(raw, ROOT)} and {args.tag}-summary.{{csv,md}} in benches/results/")


if __name__ == "__main__":
    main()
