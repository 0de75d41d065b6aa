//! `sampalloc push` against a receiver in the test that checks what Pyroscope's HTTP ingest API
//! documents for pprof ("Server HTTP API", "pprof format"): `POST /ingest`, the query keys
//! `name` (service and labels in braces), `from` and `until` (Unix seconds, from ≤ until) and
//! `format=pprof`, a `multipart/form-data` body with the parts `profile` (gzipped
//! profile.proto, decoded here with the prost types) and `sample_type_config` (JSON: units and
//! aggregation per sample type), and no `prev_profile` part (current servers refuse it).
//!
//! - A steady allocator (`tests/profile/steady.c`: 128 KiB a millisecond, 4 MiB live), dumping
//!   every 500 ms, watched by `push --watch`: the interval pushes carry about the same
//!   `alloc_space` each (their own window's, not growing totals), their sum is the last
//!   profile's cumulative count, each `inuse_space` is its own dump's, the windows follow each
//!   other, and SIGTERM stops the watcher cleanly after everything was sent.
//! - A server answering 400 with a body: one try, the status and the body's first line on
//!   stderr, a non-zero exit. 503 then 200: retried, delivered, exit 0.
//! - `sampalloc run --push URL -- prog` delivers the program's final profile.

mod common;

use common::heap_profile::{scaled, Profile as HeapProfile};
use common::pprof::{check_shape, decode};
use common::profile_programs::{cc, run_prof};
use common::{command, have, kill_group, preload_lib, wait_bounded, Scratch};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Mean sample interval of the runs here: 64 KiB, about 1,000 samples a 500 ms window.
const LG_SAMPLE: u32 = 16;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    content_type: String,
    /// (name, data) of each multipart part.
    parts: Vec<(String, Vec<u8>)>,
}

/// The receiver: answers each request with the next scripted (status, body), then 200.
struct Receiver {
    addr: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    fn start(script: Vec<(u16, &'static str)>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let Some(req) = read_request(&mut s) else {
                    continue;
                };
                seen.lock().unwrap().push(req);
                let (status, body) = script.next().unwrap_or((200, ""));
                let reason = match status {
                    200 => "OK",
                    400 => "Bad Request",
                    503 => "Service Unavailable",
                    _ => "",
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Receiver { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits (at most 30 s) for `n` requests.
    fn wait_for(&self, n: usize) -> Vec<Request> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.requests();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn read_request(s: &mut std::net::TcpStream) -> Option<Request> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let method = it.next()?.to_string();
    let target = it.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let len: usize = get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (unescape(k), unescape(v))
        })
        .collect();
    let content_type = get("content-type").unwrap_or_default();
    let parts = content_type
        .split_once("boundary=")
        .map(|(_, b)| multipart_parts(&body, b.trim_matches('"')))
        .unwrap_or_default();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        parts,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The parts of a multipart body: (name, data).
fn multipart_parts(body: &[u8], boundary: &str) -> Vec<(String, Vec<u8>)> {
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut rest = body;
    let Some(start) = find(rest, delim.as_bytes()) else {
        return out;
    };
    rest = &rest[start + delim.len()..];
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n").expect("CRLF after a boundary");
        let head_end = find(rest, b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .expect("part name")
            .to_string();
        let data_start = head_end + 4;
        let next = find(&rest[data_start..], format!("\r\n{delim}").as_bytes()).expect("part end");
        out.push((name, rest[data_start..data_start + next].to_vec()));
        rest = &rest[data_start + next + 2 + delim.len()..];
    }
    out
}

/// What the API requires of every request; returns (from, until, decoded profile).
fn check(r: &Request, name: &str) -> (u64, u64, sampalloc::pprof::proto::Profile) {
    assert_eq!(r.method, "POST", "{r:?}");
    assert_eq!(r.path, "/ingest");
    assert_eq!(r.query.get("name").map(String::as_str), Some(name));
    assert_eq!(r.query.get("format").map(String::as_str), Some("pprof"));
    let from: u64 = r.query["from"].parse().expect("from: Unix seconds");
    let until: u64 = r.query["until"].parse().expect("until: Unix seconds");
    assert!(from <= until, "from {from} until {until}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        until <= now + 1 && from + 3600 > now,
        "from {from} until {until}: not seconds of now"
    );
    assert!(r.content_type.starts_with("multipart/form-data; boundary="));
    let names: Vec<&str> = r.parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["profile", "sample_type_config"], "no prev_profile");
    let config: serde_json::Value = serde_json::from_slice(&r.parts[1].1).expect("JSON");
    for (ty, units, aggregation) in [
        ("alloc_objects", "objects", "sum"),
        ("alloc_space", "bytes", "sum"),
        ("inuse_objects", "objects", "average"),
        ("inuse_space", "bytes", "average"),
    ] {
        assert_eq!(config[ty]["units"], units, "{config}");
        assert_eq!(config[ty]["aggregation"], aggregation, "{config}");
    }
    (from, until, decode(&r.parts[0].1))
}

/// (alloc_space, inuse_space) totals of a decoded profile.
fn space(p: &sampalloc::pprof::proto::Profile) -> (f64, f64) {
    p.sample.iter().fold((0.0, 0.0), |(a, i), s| {
        (a + s.value[1] as f64, i + s.value[3] as f64)
    })
}

/// (cumulative alloc bytes, live bytes) of a profile file, scaled as the writer meant.
fn file_space(path: &Path) -> (f64, f64, usize) {
    let p = HeapProfile::read(path);
    let alloc = p
        .rows
        .iter()
        .map(|r| scaled(r.alloc_objects, r.alloc_bytes, p.r))
        .sum();
    (alloc, p.live_total(), p.rows.len())
}

/// The profile files of `dir`, in sequence order.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "heap"))
        .map(|p| {
            let seq = p
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .rsplit('.')
                .nth(2)
                .unwrap()
                .parse()
                .unwrap();
            (seq, p)
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

fn close(a: f64, b: f64, rel: f64, abs: f64) -> bool {
    (a - b).abs() <= rel * b.abs() + abs
}

fn sampalloc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sampalloc"))
}

/// A child killed (with its group) if the test fails first.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_group(c);
        }
    }
}

/// Spawns `c` in its own group with stderr collected line by line.
fn spawn_collecting(mut c: Command) -> (Guard, Arc<Mutex<Vec<String>>>) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn sampalloc");
    let err = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[push] {line}");
            l.lock().unwrap().push(line);
        }
    });
    (Guard(Some(child)), lines)
}

fn steady(dir: &Scratch) -> PathBuf {
    cc(dir, &["steady.c"], "steady", &["-O2", "-g"])
}

#[test]
fn watch_pushes_each_windows_allocations() {
    if !have("cc") {
        return;
    }
    let build = Scratch::new("push-build");
    let exe = steady(&build);
    preload_lib();
    let out = Scratch::new("push-watch");
    let rx = Receiver::start(Vec::new());
    let mut c = sampalloc();
    c.args(["push", "--url", &rx.url(), "--service", "steady"])
        .args(["--labels", "env=test,team=mem", "--watch"])
        .arg(&out.0);
    let (mut guard, lines) = spawn_collecting(c);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lines.lock().unwrap().iter().any(|l| l.contains("watching")) {
        assert!(Instant::now() < deadline, "push --watch did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:{LG_SAMPLE},prof_interval_ms:500,prof_prefix:{}",
        out.path("steady").display()
    );
    let r = run_prof(command(&exe, ["2600"]), &conf);
    r.assert_ok("steady", "steady done");
    let files = dumps(&out.0);
    let intervals = files
        .iter()
        .filter(|f| f.to_string_lossy().ends_with(".i.heap"))
        .count();
    assert!(intervals >= 3, "{intervals} interval dumps: {files:?}");
    let reqs = rx.wait_for(files.len());
    // SIGTERM: the watcher sends what is queued and exits cleanly.
    let child = guard.0.as_mut().unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait_bounded(child, Duration::from_secs(30), "push --watch after SIGTERM");
    guard.0 = None;
    let err = lines.lock().unwrap().join("\n");
    assert!(status.success(), "push --watch: {status:?}\n{err}");
    assert_eq!(reqs.len(), files.len(), "one push per dump\n{err}");

    let mut windows = Vec::new();
    let mut last_until = None;
    for (req, file) in reqs.iter().zip(&files) {
        let (from, until, p) = check(req, "steady{env=test,team=mem}");
        check_shape(&p, 1 << LG_SAMPLE);
        let (alloc, inuse) = space(&p);
        let (cum, live, rows) = file_space(file);
        eprintln!(
            "{}: from {from} until {until}: alloc_space {alloc:.0} (cumulative {cum:.0}), inuse_space {inuse:.0} (file {live:.0})",
            file.display()
        );
        assert!(
            close(inuse, live, 0.0, rows as f64 + 1.0),
            "inuse_space of {}: {inuse} pushed, {live} in the dump",
            file.display()
        );
        if let Some(u) = last_until {
            assert_eq!(from, u, "each window starts where the previous ended");
        }
        last_until = Some(until);
        windows.push((file.to_string_lossy().ends_with(".i.heap"), alloc, cum));
    }
    // Per window, not growing totals: the interval windows are alike.
    let mut iv: Vec<f64> = windows.iter().filter(|w| w.0).map(|w| w.1).collect();
    iv.sort_by(f64::total_cmp);
    let median = iv[iv.len() / 2];
    for (i, &(is_interval, alloc, cum)) in windows.iter().enumerate() {
        if is_interval {
            assert!(
                (0.6..=1.6).contains(&(alloc / median)),
                "window {i}: alloc_space {alloc:.0} against a median of {median:.0}: {windows:?}"
            );
        }
        if i >= 2 && is_interval {
            assert!(cum > 2.2 * alloc, "window {i} is not a window: {windows:?}");
        }
    }
    // The windows add up to the process's cumulative count.
    let sum: f64 = windows.iter().map(|w| w.1).sum();
    let (total, _, rows) = file_space(files.last().unwrap());
    assert!(
        close(sum, total, 0.001, 2.0 * rows as f64 * files.len() as f64),
        "windows sum to {sum:.0}, the last dump's cumulative is {total:.0}"
    );
}

/// A tiny profile of process 4242, first dump.
fn tiny_profile(dir: &Scratch) -> PathBuf {
    let p = dir.path("tiny.4242.0.i.heap");
    std::fs::write(
        &p,
        "heap profile:      1:     4096 [     3:    12288] @ heap_v2/524288\n      1:     4096 [     3:    12288] @ 0x401000 0x402000\n\nMAPPED_LIBRARIES:\n",
    )
    .unwrap();
    p
}

fn push_once(rx: &Receiver, profile: &Path) -> (std::process::ExitStatus, String) {
    let mut c = sampalloc();
    c.args([
        "push",
        "--no-symbolize",
        "--url",
        &rx.url(),
        "--service",
        "tiny",
    ])
    .arg(profile);
    let (mut guard, lines) = spawn_collecting(c);
    let status = wait_bounded(
        guard.0.as_mut().unwrap(),
        Duration::from_secs(60),
        "sampalloc push",
    );
    guard.0 = None;
    std::thread::sleep(Duration::from_millis(100));
    let err = lines.lock().unwrap().join("\n");
    (status, err)
}

#[test]
fn a_refusal_is_reported_and_not_retried() {
    let dir = Scratch::new("push-refused");
    let p = tiny_profile(&dir);
    let rx = Receiver::start(vec![(400, "invalid labels: bad name\nmore detail\n")]);
    let (status, err) = push_once(&rx, &p);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("400 Bad Request: invalid labels: bad name"),
        "status and first line of the body expected:\n{err}"
    );
    assert!(!err.contains("more detail"), "{err}");
    assert!(!err.contains("retrying"), "{err}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "a 400 is not retried");
    let (_, _, profile) = check(&reqs[0], "tiny{}");
    assert_eq!(
        space(&profile).1,
        (4096.0 / -(-1.0f64 / 128.0).exp_m1()).round()
    );
}

#[test]
fn unavailable_is_retried() {
    let dir = Scratch::new("push-retry");
    let p = tiny_profile(&dir);
    let rx = Receiver::start(vec![(503, "overloaded\n")]);
    let (status, err) = push_once(&rx, &p);
    assert!(status.success(), "{err}");
    assert!(err.contains("503") && err.contains("retrying"), "{err}");
    assert!(err.contains("1 profile(s) pushed"), "{err}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "one retry");
    for r in &reqs {
        check(r, "tiny{}");
    }
    assert_eq!(reqs[0].parts, reqs[1].parts, "the same profile again");
}

#[test]
fn run_push_delivers_the_final_profile() {
    if !have("cc") {
        return;
    }
    let build = Scratch::new("push-run-build");
    let exe = steady(&build);
    let out = Scratch::new("push-run");
    let dir = out.path("profiles");
    let rx = Receiver::start(Vec::new());
    let mut c = sampalloc();
    c.env("SAMPALLOC_LIB", preload_lib())
        .env("SAMPALLOC_CONF", format!("lg_prof_sample:{LG_SAMPLE}"))
        .args([
            "run",
            "--push",
            &rx.url(),
            "--push-labels",
            "env=ci",
            "--out",
        ])
        .arg(&dir)
        .arg("--")
        .arg(&exe)
        .arg("400");
    let (mut guard, lines) = spawn_collecting(c);
    let status = wait_bounded(
        guard.0.as_mut().unwrap(),
        Duration::from_secs(90),
        "sampalloc run --push",
    );
    guard.0 = None;
    std::thread::sleep(Duration::from_millis(100));
    let err = lines.lock().unwrap().join("\n");
    assert!(status.success(), "{err}");
    let files = dumps(&dir);
    let last = files.last().expect("a final profile");
    assert!(last.to_string_lossy().ends_with(".f.heap"), "{files:?}");
    // Delivered before run returned: no waiting here.
    let reqs = rx.requests();
    assert_eq!(reqs.len(), files.len(), "{err}");
    let (from, until, p) = check(reqs.last().unwrap(), "steady{env=ci}");
    let (alloc, inuse) = space(&p);
    let (cum, live, rows) = file_space(last);
    assert!(
        close(inuse, live, 0.0, rows as f64 + 1.0),
        "{inuse} vs {live}"
    );
    // The process's only dump: alloc since it started, over a window from its start.
    assert!(
        close(alloc, cum, 0.0, rows as f64 + 1.0),
        "{alloc} vs {cum}"
    );
    assert!(alloc > 20.0 * 1048576.0, "{alloc}");
    assert!(until - from <= 2, "from {from} until {until}");
    assert!(err.contains("profile(s) pushed"), "{err}");
}
