"""The workload suite's runners: building the workloads and sampalloc's preload, finding the
allocators to compare, and running each workload, real program and the JVM row under one of them.
run.py drives them; report.py turns their rows into the summary.

Nothing here installs anything: an allocator whose library is not found is left out with a note
to run benches/workloads/setup.sh (which installs them with apt-get). An allocator built outside
the project is named on the command line as `name=/path/to/lib.so` and preloaded like the others.

Every run records the process's page faults (`faults`: minor + major, from its rusage, or from
/proc/PID/stat for redis-server) and, for the C workloads, `anon_huge_kb`: its anonymous memory
backed by transparent huge pages at the time of its RESULT line (common.h).
"""

import os
import random
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
BUILD = os.path.join(ROOT, "target", "workloads")
# An empty shared library (preload_floor.c): the `preload-floor` configuration preloads it.
PRELOAD_FLOOR = os.path.join(BUILD, "libpreload_floor.so")
RUN_TIMEOUT = 180  # seconds; any single run longer than this is killed and recorded as failed

# Workloads: name -> (program, args). Sized so that glibc takes about 0.5-3 s on a 2-core machine.
WORKLOADS = {
    "pairs": ("pairs", ["pairs", "30000"]),
    "random-pairs": ("pairs", ["random", "200000"]),
    "batches": ("pairs", ["batches", "600"]),
    "realloc": ("realloc", ["12"]),
    "regrow": ("regrow", ["200000"]),
    "larson": ("larson", ["4", "160", "50000", "1000"]),
    "prodcons": ("prodcons", ["2", "3000000", "16384"]),
    "cache-scratch": ("cache", ["scratch", "2", "1000", "8", "40000"]),
    "cache-thrash": ("cache", ["thrash", "2", "1000", "8", "40000"]),
    "frag": ("frag", ["8", "300000", "4000"]),
    "rss1g": ("rss1g", ["2", "1024"]),
    "rounds": ("rounds", ["40", "16", "10000"]),
    "churn": ("churn", ["2", "20000000", "2000"]),
    "bigloop": ("bigloop", ["400"]),
    "batchq": ("batchq", ["2", "8000000", "64", "4096"]),
    # The same queue with one object in 7,000 twice as large.
    "batchq-odd": ("batchq", ["2", "8000000", "64", "4096", "7000"]),
}
PROGRAMS = [
    "pairs", "realloc", "regrow", "larson", "prodcons", "cache", "frag", "rss1g", "rounds", "churn",
    "bigloop", "batchq",
]

# The JVM row (issue 20): a fixed-duration run, sampled every JVM_SAMPLE_S seconds.
JVM = "jvm-churn"
JVM_SOURCE = os.path.join(ROOT, "tests", "preload", "NativeChurn.java")
JVM_FLAGS = ["-Xms512m", "-Xmx512m", "-XX:+AlwaysPreTouch"]
JVM_THREADS = 16
JVM_SAMPLE_S = 2
JVM_ALLOCATORS = ("glibc", "jemalloc", "mimalloc", "tcmalloc", "sampalloc")

CSV_FIELDS = [
    "workload", "allocator", "rep", "status", "wall_s", "cpu_s", "seconds", "ops", "ops_per_sec",
    "threads", "peak_rss_kb", "final_rss_kb", "settled_rss_kb", "freed_rss_kb", "start_rss_kb",
    "retained_kb", "live_kb", "shared_line_pairs", "faults", "anon_huge_kb", "result_line",
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
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", PRELOAD_FLOOR, os.path.join(HERE, "preload_floor.c")],
                   check=True)
    log(f"== built {len(PROGRAMS)} workload programs and the empty preload library in "
        f"{os.path.relpath(BUILD, ROOT)}/")
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


# The allocators known by name; anything else is given as name=/path/to/lib.so.
KNOWN_ALLOCATORS = (
    "glibc", "preload-floor", "jemalloc", "mimalloc", "tcmalloc", "sampalloc", "sampalloc-prof", "sampalloc-thp",
    "jemalloc-prof",
)


def find_allocators(so, wanted):
    missing = [pkg for name, (soname, pkg) in LIBS.items() if name in wanted and not find_lib(soname)]
    if missing:
        log(f"== missing allocators ({' '.join(missing)}): run benches/workloads/setup.sh to install them")
    allocs = []  # (name, LD_PRELOAD or None, extra env)
    for name in wanted:
        if "=" in name:
            # A preload library built outside the project, e.g. mimalloc3=/path/to/libmimalloc.so.
            name, path = name.split("=", 1)
            if name in KNOWN_ALLOCATORS or not name or any(a[0] == name for a in allocs):
                sys.exit(f"allocator name {name!r} of {name}={path} is empty, taken or already used")
            if not os.path.isfile(path):
                sys.exit(f"allocator {name}: no such library {path}")
            allocs.append((name, os.path.abspath(path), {}))
        elif name == "glibc":
            allocs.append((name, None, {}))
        elif name == "preload-floor":
            # glibc's malloc with an empty library preloaded: what preloading alone costs.
            allocs.append((name, PRELOAD_FLOOR, {}))
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
        elif name == "sampalloc-thp":
            # Segments in huge pages too (issue 19), profiler off as in `sampalloc`.
            allocs.append((name, so, {"SAMPALLOC_CONF": "prof:false,thp:always"}))
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
    (user + system), page faults (minor + major)), the last two of the process and the children
    it waited for."""
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
                err.read().decode(errors="replace"), ru.ru_utime + ru.ru_stime, ru.ru_minflt + ru.ru_majflt)


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
    code, wall, maxrss, out, err, cpu, faults = run_timed([os.path.join(BUILD, prog), *args], child_env(preload, extra))
    row = {"workload": name, "allocator": aname, "rep": rep, "wall_s": f"{wall:.4f}", "cpu_s": f"{cpu:.4f}",
           "faults": faults}
    res = parse_result(out)
    if code != 0 or res is None:
        row["status"] = f"failed(exit {code})"
        log(f"   {name} {aname}: FAILED exit {code}: {err.strip()[-300:]}")
    else:
        row["status"] = "ok"
        row.update({k: v for k, v in res.items() if k in CSV_FIELDS and k not in ("name",)})
    return row


def rotated(seq, k):
    """The allocators in the order of repetition k: a shuffle seeded by k (the same for every
    run of the suite). A plain rotation kept each allocator behind the same one in every
    repetition, and what a process leaves behind is not neutral: on this VM a process that
    faults in huge pages right after another released its own gets them several times cheaper
    (the host has backed them already), so sampalloc-prof, always run right after sampalloc,
    looked 11 % faster than sampalloc."""
    order = list(seq)
    random.Random(k).shuffle(order)
    return order


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


def proc_faults(pid):
    """Minor + major page faults of a running process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[7]) + int(fields[9])
    except (OSError, IndexError, ValueError):
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
        faults = proc_faults(server.pid)
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "shutdown", "nosave"],
                       capture_output=True, timeout=10)
        server.wait(timeout=10)
        # seconds: the time 100000 requests of each of the four tests take at the measured rates
        row.update(status="ok" if server.returncode == 0 else f"failed(exit {server.returncode})",
                   wall_s=f"{wall:.4f}", cpu_s=f"{cpu:.4f}" if cpu is not None else None, seconds=f"{sum(100000 / r for r in rps):.4f}", ops=400000,
                   ops_per_sec=f"{statistics.mean(rps):.0f}", peak_rss_kb=hwm, faults=faults,
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
    code, wall, maxrss, out, err, cpu, faults = run_timed(argv, env)
    row = {"workload": name, "allocator": aname, "rep": rep, "wall_s": f"{wall:.4f}", "cpu_s": f"{cpu:.4f}",
           "peak_rss_kb": maxrss, "faults": faults}
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
               faults=ru.ru_minflt + ru.ru_majflt,  # the whole run, the pre-touched Java heap included
               peak_rss_kb=max(kb for _, kb in rss) if rss else None,
               final_rss_kb=busy[-1] if busy else None)
    return row
