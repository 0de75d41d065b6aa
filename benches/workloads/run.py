#!/usr/bin/env python3
"""The multi-threaded workload suite: every workload under every allocator, interleaved.

Run from anywhere (the repository is found from this file's location):

    benches/workloads/run.sh                  # build, run the C workloads, 5 repetitions
    benches/workloads/run.sh --real           # ... and the real programs (redis, python3, gcc)
    benches/workloads/run.sh --reps 3 --only larson,prodcons --allocators glibc,sampalloc

What it does:
1. builds sampalloc's preload (`cargo build --release -p sampalloc-preload`,
   target/release/libsampalloc.so) and the C workloads of this directory (`cc -O2 -pthread`, into
   target/workloads/);
2. finds libjemalloc.so.2, libmimalloc.so.2 and libtcmalloc_minimal.so.4 (`ldconfig -p`, then the
   multiarch directory); when one is missing it installs the Debian packages if run as root with
   apt-get, and otherwise says what to install and leaves that allocator out;
3. runs each workload under each configuration — glibc (no preload), jemalloc, mimalloc, tcmalloc,
   sampalloc (`SAMPALLOC_CONF=prof:false`), sampalloc-prof (`prof:true`, default sample
   interval) and jemalloc-prof (`MALLOC_CONF=prof:true`: jemalloc's own profiler at the same
   512 KiB mean interval, the yardstick for the cost of profiling) — interleaved: for each workload, repetition 1 runs A B C D E F, repetition 2 the same
   list rotated by one, and so on, so slow phases of a shared machine hit every allocator alike;
4. writes benches/results/workloads.csv (one row per run), benches/results/workloads-summary.csv
   and benches/results/workloads-summary.md (medians; ratios to glibc: speed as glibc_time/x_time,
   bigger is better; memory as x/glibc, smaller is better; the issue's targets marked met/missed;
   the cost of profiling as sampalloc-prof time / sampalloc time, and jemalloc-prof / jemalloc
   beside it), and prints the summary;
5. with --real, the same for real programs: redis-server on 127.0.0.1 (a free port, no
   persistence) driven by redis-benchmark, a python3 JSON/dict workload, and gcc -O2 on a
   generated C file; and checks with `SAMPALLOC_CONF=stats_print:true` that sampalloc really
   serves redis-server's allocations (Debian's redis links jemalloc itself).

6. when java and javac are installed, the jvm-churn row: tests/preload/NativeChurn.java (16 threads
   looping GZIP round trips and Unsafe.allocateMemory/freeMemory of 16 B-1 MiB blocks, issue 20)
   in a JVM with a fixed, pre-touched heap, for --jvm-seconds (default 60) under glibc, jemalloc,
   mimalloc, tcmalloc and sampalloc, interleaved; VmRSS is sampled every 2 s into
   benches/results/jvm-rss.csv (plotted as jvm-rss.svg), and the summary gives RSS at 2, 30 and
   60 s, the peak, the growth over the last half and ops/s against glibc. Its `seconds` and `cpu_s`
   are per 1000 loop iterations, so their ratios are the ops/s ratios.

Python 3 standard library only. Each run has a timeout; redis is shut down (or killed) on any
failure. Plots: benches/workloads/plot.py (run at the end automatically).
"""

import argparse
import csv
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(ROOT, "benches", "results")
BUILD = os.path.join(ROOT, "target", "workloads")
RUN_TIMEOUT = 180  # seconds; any single run longer than this is killed and recorded as failed

# Workloads: name -> (program, args). Sized so that glibc takes about 0.5-3 s on a 2-core machine.
WORKLOADS = {
    "pairs": ("pairs", ["pairs", "30000"]),
    "batches": ("pairs", ["batches", "600"]),
    "realloc": ("realloc", ["12"]),
    "larson": ("larson", ["4", "80", "50000", "1000"]),
    "prodcons": ("prodcons", ["2", "3000000", "16384"]),
    "cache-scratch": ("cache", ["scratch", "2", "1000", "8", "40000"]),
    "cache-thrash": ("cache", ["thrash", "2", "1000", "8", "40000"]),
    "frag": ("frag", ["8", "300000", "4000"]),
    "rss1g": ("rss1g", ["2", "1024"]),
}
PROGRAMS = ["pairs", "realloc", "larson", "prodcons", "cache", "frag", "rss1g"]

# The JVM row (issue 20): a fixed-duration run, sampled every JVM_SAMPLE_S seconds.
JVM = "jvm-churn"
JVM_SOURCE = os.path.join(ROOT, "tests", "preload", "NativeChurn.java")
JVM_FLAGS = ["-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch"]
JVM_THREADS = 16
JVM_SAMPLE_S = 2
JVM_ALLOCATORS = ("glibc", "jemalloc", "mimalloc", "tcmalloc", "sampalloc")

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
    "realloc": ["peak_rss_kb", "final_rss_kb"],
    "larson": ["peak_rss_kb"],
    "redis": ["peak_rss_kb"],
    "python3": ["peak_rss_kb"],
    "gcc": ["peak_rss_kb"],
    JVM: ["peak_rss_kb", "final_rss_kb"],
}

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
]

CSV_FIELDS = [
    "workload", "allocator", "rep", "status", "wall_s", "cpu_s", "seconds", "ops", "ops_per_sec",
    "threads", "peak_rss_kb", "final_rss_kb", "settled_rss_kb", "freed_rss_kb", "start_rss_kb",
    "retained_kb", "live_kb", "shared_line_pairs", "result_line",
]

LIBS = {
    "jemalloc": ("libjemalloc.so.2", "libjemalloc2"),
    "mimalloc": ("libmimalloc.so.2", "libmimalloc2.0"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
}


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- build and discovery


def build(skip_cargo):
    if not skip_cargo:
        log("== cargo build --release -p sampalloc-preload")
        subprocess.run(["cargo", "build", "--release", "-p", "sampalloc-preload"], cwd=ROOT, check=True)
    so = os.path.join(ROOT, "target", "release", "libsampalloc.so")
    if not os.path.exists(so):
        sys.exit(f"missing {so}: build it with cargo build --release -p sampalloc-preload")
    os.makedirs(BUILD, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    for prog in PROGRAMS:
        src = os.path.join(HERE, prog + ".c")
        out = os.path.join(BUILD, prog)
        subprocess.run([cc, "-O2", "-pthread", "-Wall", "-o", out, src], check=True)
    log(f"== built {len(PROGRAMS)} workload programs in {os.path.relpath(BUILD, ROOT)}/")
    return so


def ldconfig_paths():
    """soname -> path from `ldconfig -p`, preferring 64-bit entries."""
    found = {}
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        if m and (m.group(1) not in found or "64" in m.group(2)):
            found[m.group(1)] = m.group(3)
    return found


def find_lib(soname):
    path = ldconfig_paths().get(soname)
    if path and os.path.exists(path):
        return path
    try:
        triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    except OSError:
        triplet = ""
    for d in [f"/usr/lib/{triplet}", f"/lib/{triplet}", "/usr/lib64", "/usr/lib", "/usr/local/lib"]:
        p = os.path.join(d, soname)
        if triplet and os.path.exists(p):
            return p
    return None


def find_allocators(so, wanted):
    missing = [pkg for name, (soname, pkg) in LIBS.items() if name in wanted and not find_lib(soname)]
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"== installing {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env)
        else:
            log(f"== missing allocators; install them with: sudo apt-get install {' '.join(missing)}")
    allocs = []  # (name, LD_PRELOAD or None, extra env)
    for name in wanted:
        if name == "glibc":
            allocs.append((name, None, {}))
        elif name in LIBS or name == "jemalloc-prof":
            lib = LIBS[name.removesuffix("-prof")][0]
            path = find_lib(lib)
            # jemalloc's profiler at its default interval (lg_prof_sample:19, as ours), no dumps.
            env = {"MALLOC_CONF": "prof:true"} if name == "jemalloc-prof" else {}
            if path:
                allocs.append((name, path, env))
            else:
                log(f"== {name}: {lib} not found, left out")
        elif name == "sampalloc":
            allocs.append((name, so, {"SAMPALLOC_CONF": "prof:false"}))
        elif name == "sampalloc-prof":
            allocs.append((name, so, {"SAMPALLOC_CONF": "prof:true"}))
        else:
            sys.exit(f"unknown allocator {name}")
    return allocs


# ---------------------------------------------------------------- running


def child_env(preload, extra):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("SAMPALLOC_CONF", None)
    if preload:
        env["LD_PRELOAD"] = preload
    env.update(extra)
    return env


def run_timed(argv, env, timeout=RUN_TIMEOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """Runs argv; returns (exit status, wall seconds, ru_maxrss KiB, stdout, stderr, CPU seconds
    (user + system, of the process and the children it waited for))."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return (p.returncode, wall, ru.ru_maxrss, out.read().decode(errors="replace"),
                err.read().decode(errors="replace"), ru.ru_utime + ru.ru_stime)


def parse_result(text):
    for line in text.splitlines():
        if line.startswith("RESULT "):
            kv = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            kv["result_line"] = line
            return kv
    return None


def run_workload(name, alloc, rep):
    prog, args = WORKLOADS[name]
    aname, preload, extra = alloc
    code, wall, maxrss, out, err, cpu = run_timed([os.path.join(BUILD, prog), *args], child_env(preload, extra))
    row = {"workload": name, "allocator": aname, "rep": rep, "wall_s": f"{wall:.4f}", "cpu_s": f"{cpu:.4f}"}
    res = parse_result(out)
    if code != 0 or res is None:
        row["status"] = f"failed(exit {code})"
        log(f"   {name} {aname}: FAILED exit {code}: {err.strip()[-300:]}")
    else:
        row["status"] = "ok"
        row.update({k: v for k, v in res.items() if k in CSV_FIELDS and k not in ("name",)})
    return row


def rotated(seq, k):
    k %= len(seq)
    return seq[k:] + seq[:k]


# ---------------------------------------------------------------- real programs


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LIVE_PROCS = []  # redis servers to kill if anything goes wrong


def kill_live():
    for p in LIVE_PROCS:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
    LIVE_PROCS.clear()


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_cpu(pid):
    """User + system CPU seconds of a running process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def redis_run(alloc, rep, conf_override=None):
    """One redis-server under `alloc`, driven by redis-benchmark (not preloaded) from outside."""
    aname, preload, extra = alloc
    extra = dict(extra)
    if conf_override:
        extra["SAMPALLOC_CONF"] = conf_override
    port = free_port()
    errf = tempfile.TemporaryFile()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--protected-mode", "yes", "--daemonize", "no", "--logfile", ""],
        env=child_env(preload, extra), stdout=subprocess.DEVNULL, stderr=errf, start_new_session=True)
    LIVE_PROCS.append(server)
    row = {"workload": "redis", "allocator": aname, "rep": rep}
    try:
        deadline = time.monotonic() + 10
        while True:
            ping = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"],
                                  capture_output=True, text=True, timeout=5)
            if ping.stdout.strip() == "PONG":
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        t0 = time.monotonic()
        bench = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-q", "-n", "100000",
                                "-t", "set,get,lpush,lpop", "--csv"], capture_output=True, text=True, timeout=120)
        wall = time.monotonic() - t0
        rps = [float(m.group(1)) for m in re.finditer(r'^"[^"]+","([0-9.]+)"', bench.stdout, re.M)]
        if len(rps) != 4:
            raise RuntimeError(f"redis-benchmark output not understood: {bench.stdout[:300]} {bench.stderr[:300]}")
        hwm = vm_hwm(server.pid)
        cpu = proc_cpu(server.pid)
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave"],
                       capture_output=True, timeout=10)
        server.wait(timeout=10)
        # seconds: the time 100000 requests of each of the four tests take at the measured rates
        row.update(status="ok" if server.returncode == 0 else f"failed(exit {server.returncode})",
                   wall_s=f"{wall:.4f}", cpu_s=f"{cpu:.4f}" if cpu is not None else None, seconds=f"{sum(100000 / r for r in rps):.4f}", ops=400000,
                   ops_per_sec=f"{statistics.mean(rps):.0f}", peak_rss_kb=hwm,
                   result_line="rps " + " ".join(f"{r:.0f}" for r in rps))
    except Exception as e:  # noqa: BLE001 - any failure: record it, kill the server
        row["status"] = f"failed({e})"
        log(f"   redis {aname}: FAILED {e}")
    finally:
        kill_live()
        errf.seek(0)
        stderr = errf.read().decode(errors="replace")
        errf.close()
    return row, stderr


PY_WORKLOAD = r"""
import json, time, random
t0 = time.monotonic()
rnd = random.Random(5)
docs = [{"id": i, "name": "item%d" % i, "tags": ["t%d" % (i % 7), "x" * (i % 50)],
         "nested": {"a": [rnd.random() for _ in range(8)], "b": {"c": str(i) * 3}}} for i in range(3000)]
total = 0
for rnd_i in range(12):
    s = json.dumps(docs)
    back = json.loads(s)
    total += len(s) + len(back)
    d = {}
    for i in range(60000):
        d["k%d" % (i ^ rnd_i)] = [i, str(i), (i, i + 1)]
        if i % 3 == 0:
            d.pop("k%d" % ((i // 2) ^ rnd_i), None)
    total += len(d)
assert total > 0
print("RESULT name=python3 ops=%d seconds=%.6f" % (total, time.monotonic() - t0))
"""

# ≈ 3 s of cc1 on an idle core (1500 functions took 20-30 s on the loaded 2-core machine).
GCC_SOURCE_FUNCS = 200


def gcc_source():
    """A deterministic, moderately large C file (GCC_SOURCE_FUNCS functions with loops, switches,
    structs, string calls)."""
    path = os.path.join(BUILD, f"gen_compile_{GCC_SOURCE_FUNCS}.c")
    if os.path.exists(path):
        return path
    parts = ["#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n"]
    for i in range(GCC_SOURCE_FUNCS):
        parts.append(f"""
struct s{i} {{ int a[{i % 13 + 2}]; double d; const char *name; struct s{i} *next; }};
static int helper{i}(struct s{i} *p, int n) {{
    int acc = {i};
    for (int k = 0; k < n; k++) {{
        switch ((k + acc) % 5) {{
        case 0: acc += p->a[k % {i % 13 + 2}] * {i % 7 + 1}; break;
        case 1: acc ^= (int)(p->d * k); break;
        case 2: acc -= (int)strlen(p->name) + k; break;
        case 3: if (p->next) acc += helper{i}(p->next, n / 2); break;
        default: acc = acc * 31 + k;
        }}
    }}
    return acc;
}}
int fn{i}(int x) {{
    struct s{i} v; memset(&v, 0, sizeof v); v.name = "fn{i}"; v.d = x * 0.5;
    for (int k = 0; k < {i % 13 + 2}; k++) v.a[k] = x + k * {i % 11};
    char buf[64]; snprintf(buf, sizeof buf, "%d-%s", x, v.name);
    return helper{i}(&v, x % 17 + 3) + (int)strlen(buf);
}}""")
    parts.append("\nint main(int argc, char **argv) { (void)argv; int t = 0;\n")
    for i in range(0, GCC_SOURCE_FUNCS, 7):
        parts.append(f"  t += fn{i}(argc + {i});\n")
    parts.append("  printf(\"%d\\n\", t); return 0; }\n")
    with open(path, "w") as f:
        f.write("".join(parts))
    return path


def real_run(name, alloc, rep):
    aname, preload, extra = alloc
    env = child_env(preload, extra)
    if name == "python3":
        py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        env["PYTHONMALLOC"] = "malloc"  # every object through malloc, not pymalloc's arenas
        argv = [py, "-c", PY_WORKLOAD]
    else:  # gcc
        argv = ["gcc", "-O2", "-c", gcc_source(), "-o", os.path.join(BUILD, f"gen_compile.{aname}.o")]
    code, wall, maxrss, out, err, cpu = run_timed(argv, env)
    row = {"workload": name, "allocator": aname, "rep": rep, "wall_s": f"{wall:.4f}", "cpu_s": f"{cpu:.4f}",
           "peak_rss_kb": maxrss}
    res = parse_result(out)
    if code != 0:
        row["status"] = f"failed(exit {code})"
        log(f"   {name} {aname}: FAILED exit {code}: {err.strip()[-300:]}")
    else:
        row["status"] = "ok"
        row["seconds"] = res["seconds"] if res else f"{wall:.4f}"
        if res:
            row["ops"] = res.get("ops")
    return row


def redis_stats_check(allocs):
    """Does sampalloc really serve redis-server (which links Debian's libjemalloc)?"""
    samp = [a for a in allocs if a[0] == "sampalloc"]
    if not samp:
        return "not checked (sampalloc not among the allocators)"
    row, stderr = redis_run(samp[0], 0, conf_override="stats_print:true")
    if "___ sampalloc statistics ___" not in stderr:
        return f"NO: no sampalloc statistics on redis-server's stderr (status {row.get('status')})"
    lines = [l for l in stderr.splitlines() if l.strip()]
    head = " / ".join(l.strip() for l in lines[:6])
    return f"yes: redis-server printed the sampalloc statistics at shutdown ({head[:400]})"


# ---------------------------------------------------------------- the JVM row


def jvm_build():
    """Compiles NativeChurn.java into target/workloads/java; the class directory, or None."""
    if not (shutil.which("java") and shutil.which("javac")):
        return None
    out = os.path.join(BUILD, "java")
    os.makedirs(out, exist_ok=True)
    subprocess.run(["javac", "-nowarn", "-d", out, JVM_SOURCE], check=True, env=child_env(None, {}),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def vm_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def jvm_run(classes, alloc, rep, seconds, samples):
    """One NativeChurn run of `seconds` under `alloc`; appends (allocator, rep, t, rss_kb) to
    `samples` every JVM_SAMPLE_S seconds since the start."""
    aname, preload, extra = alloc
    argv = ["java", *JVM_FLAGS, "-cp", classes, "NativeChurn", str(seconds), str(JVM_THREADS)]
    row = {"workload": JVM, "allocator": aname, "rep": rep, "threads": JVM_THREADS}
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, env=child_env(preload, extra), stdout=out, stderr=err, start_new_session=True)
        limit = t0 + seconds + RUN_TIMEOUT
        nxt = t0 + JVM_SAMPLE_S
        rss = []
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            now = time.monotonic()
            if now > limit:
                os.killpg(p.pid, signal.SIGKILL)
                continue
            if now >= nxt:
                kb = vm_rss(p.pid)
                if kb is not None:
                    t = round(now - t0, 1)
                    rss.append((t, kb))
                    samples.append({"allocator": aname, "rep": rep, "t_s": t, "rss_kb": kb})
                nxt += JVM_SAMPLE_S
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    res = parse_result(stdout)
    row["wall_s"] = f"{wall:.4f}"
    if p.returncode != 0 or res is None:
        row["status"] = f"failed(exit {p.returncode})"
        log(f"   {JVM} {aname}: FAILED exit {p.returncode}: {stderr.strip()[-300:]}")
        return row
    ops = int(res["ops"])
    busy = [kb for t, kb in rss if t <= seconds]  # the Java clock starts after the JVM: all busy
    row.update(status="ok", ops=ops, ops_per_sec=res.get("ops_per_sec"), result_line=res["result_line"],
               seconds=f"{1000 * float(res['seconds']) / max(ops, 1):.6f}",
               cpu_s=f"{1000 * (ru.ru_utime + ru.ru_stime) / max(ops, 1):.6f}",
               peak_rss_kb=max(kb for _, kb in rss) if rss else None,
               final_rss_kb=busy[-1] if busy else None)
    return row


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


def summarize(rows, allocs, workloads):
    names = [a[0] for a in allocs]
    summary = []  # dicts: workload, metric, allocator, median, ratio, spread
    for wl in workloads:
        metrics = ["seconds", "cpu_s"] + MEMORY_METRICS.get(wl, [])
        for metric in metrics:
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


def render(summary, allocs, workloads, profc, je_profc, targets_for, notes):
    names = [a[0] for a in allocs]
    lines = []
    lines.append("Medians over repetitions; `ratio` is to glibc: speed (seconds rows) as "
                 "glibc_time / x_time, bigger is better (`seconds`: the workload's own timer; `cpu_s`: the "
                 "process's user + system CPU time); memory as x / glibc, smaller is better. "
                 "`±` is the spread (max − min) / median of the runs.\n")
    head = "| workload | metric | " + " | ".join(names) + " |"
    lines.append(head)
    lines.append("|" + "---|" * (2 + len(names)))
    for wl in workloads:
        for metric in ["seconds", "cpu_s"] + MEMORY_METRICS.get(wl, []):
            cells = []
            for a in names:
                s = next((x for x in summary if x["workload"] == wl and x["metric"] == metric and x["allocator"] == a), None)
                if not s or s["median"] is None:
                    cells.append("failed" if s and s["failed"] else "–")
                    continue
                unit = "s" if metric in SPEED_METRICS else " MiB"
                val = s["median"] if metric in SPEED_METRICS else s["median"] / 1024
                cell = f"{fmt(val)}{unit}"
                if a != "glibc" and s["ratio"] is not None:
                    cell += f" (**{s['ratio']:.2f}×**)"
                if metric in SPEED_METRICS and s["spread"] is not None:
                    cell += f" ±{100 * s['spread']:.0f}%"
                if s["failed"]:
                    cell += f" [{s['failed']} failed]"
                cells.append(cell)
            lines.append(f"| {wl} | {metric} | " + " | ".join(cells) + " |")
    lines.append("")
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
            g = geomean([c for c, _ in profc.values()])
            gc = geomean([cc for _, cc in profc.values() if cc])
            if g is None:
                continue
            shown = f"{100 * (g - 1):+.1f} %" + (f"; by CPU time {100 * (gc - 1):+.1f} %" if gc else "")
            out.append((label, shown, "met" if g <= bound else "**missed**"))
            continue
        s = next((x for x in summary if x["workload"] == wl and x["metric"] == metric and x["allocator"] == "sampalloc"), None)
        if not s or s["ratio"] is None:
            continue
        if kind == "speed":
            shown = f"{s['ratio']:.2f}× glibc speed" + (f" (time {1 / s['ratio']:.2f}× glibc)" if wl == "frag" else "")
            c = next((x for x in summary if x["workload"] == wl and x["metric"] == "cpu_s" and x["allocator"] == "sampalloc"), None)
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
    return (f"Machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"load average at the end {' '.join(load)}; {reps} repetitions, interleaved.")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per configuration (default 5)")
    ap.add_argument("--only", default="", help="comma-separated workloads (default: all)")
    ap.add_argument("--allocators",
                    default="glibc,jemalloc,mimalloc,tcmalloc,sampalloc,sampalloc-prof,jemalloc-prof")
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
            log(f"== java or javac not found: {JVM} left out (install default-jdk-headless)")
    for w in workloads:
        if w not in WORKLOADS and w != JVM:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}, {JVM}")
    jvm_allocs = [a for a in allocs if a[0] in JVM_ALLOCATORS]
    jvm_samples = []
    if real:
        for tool in ("redis-server", "redis-benchmark", "redis-cli", "gcc"):
            if not shutil.which(tool):
                log(f"== {tool} not found: install redis-server redis-tools gcc for --real; skipping redis")
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
    cmd = "benches/workloads/run.sh " + " ".join(sys.argv[1:])
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
    text = render(summary, allocs, all_wl, profc, je_profc, targets, notes)
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
