//! `sampalloc push`: sends heap profiles to Grafana Pyroscope's HTTP ingest API, as files given
//! on the command line or, with `--watch DIR`, each new dump as it appears; `sampalloc run
//! --push URL` runs the watcher beside the program.
//!
//! The API (Pyroscope's "Server HTTP API", section "pprof format"): `POST /ingest` with the
//! query `name=SERVICE{k=v,…}`, `from` and `until` (Unix seconds), `format=pprof`, and a
//! `multipart/form-data` body with the gzipped profile in the part `profile` and the sample
//! type configuration (units, aggregation, display name of each sample type) in the part
//! `sample_type_config`. No `prev_profile` part: current servers refuse it, and store each
//! profile as sent, computing no deltas. So each push carries, per stack, the allocations of its
//! own window (the growth of the cumulative counts since the previous dump of the same
//! process, [`analysis::window`]; since the process started for its first dump) and the live
//! counts as of the dump; `from`/`until` are the window's bounds (the dumps' file times, and the
//! process's start time for its first).
//!
//! Transport: HTTP/1.1 over a `TcpStream`, `http://` only (no TLS), one request per connection,
//! to the given URL's host only. A sender thread takes profiles from a bounded queue (the oldest
//! is dropped, with a warning, when it is full) and retries connection errors, 429 and 5xx
//! answers with doubling backoff, a bounded number of times; any other refusal is reported with
//! its status and the first line of its body, and not retried.

use crate::PushArgs;
use sampalloc::analysis::{self, parse, pprof, symbolize::Symbolizer, window};
use sampalloc::profile::ProfileName;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often `--watch` lists the directory. A profile is taken once its size is the same at
/// two successive looks (the engine creates it `O_EXCL` and then writes it).
const POLL: Duration = Duration::from_millis(200);
/// First retry delay; doubled each time, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Read and write timeout per request.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect timeout per address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest answer read (only its status and first body line are used).
const MAX_ANSWER: u64 = 1 << 20;
/// After a stop, how long the watcher keeps looking for profiles still being written.
const FINAL_SETTLE: Duration = Duration::from_secs(3);

/// The `sample_type_config` part: how Pyroscope shows each sample type. Units and aggregation
/// as its documentation gives them (`objects`/`bytes`; `sum` for allocations, which add up over
/// time, `average` for live memory, which does not); display names as Go's heap profile names
/// them; not `sampled` (memory, not CPU samples); not `cumulative`: each profile's `alloc_*`
/// are already its own window's.
const SAMPLE_TYPE_CONFIG: &str = concat!(
    r#"{"alloc_objects":{"units":"objects","aggregation":"sum","display-name":"alloc_objects","sampled":false,"cumulative":false},"#,
    r#""alloc_space":{"units":"bytes","aggregation":"sum","display-name":"alloc_space","sampled":false,"cumulative":false},"#,
    r#""inuse_objects":{"units":"objects","aggregation":"average","display-name":"inuse_objects","sampled":false,"cumulative":false},"#,
    r#""inuse_space":{"units":"bytes","aggregation":"average","display-name":"inuse_space","sampled":false,"cumulative":false}}"#
);

/// Where and how to push.
pub(crate) struct Config {
    /// `host[:port]` as given (the `Host` header).
    authority: String,
    /// `host:port` to connect to.
    connect: String,
    /// The ingest path: the URL's path + `/ingest`.
    path: String,
    /// `SERVICE{k=v,…}`.
    name: String,
    symbolize: bool,
    queue: usize,
    attempts: u32,
}

impl Config {
    /// Checks the URL (`http://host[:port][/path]`), the service name and the labels.
    pub(crate) fn new(
        url: &str,
        service: &str,
        labels: &[String],
        symbolize: bool,
        queue: usize,
        attempts: u32,
    ) -> Result<Config, String> {
        let (authority, connect, base) = parse_url(url)?;
        Ok(Config {
            authority,
            connect,
            path: format!("{base}/ingest"),
            name: app_name(service, labels)?,
            symbolize,
            queue: queue.max(1),
            attempts: attempts.max(1),
        })
    }

    fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// `http://host[:port][/path]` → (authority, host:port, path without a trailing `/`).
fn parse_url(url: &str) -> Result<(String, String, String), String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.starts_with("http://").then(|| &url[7..]) else {
        return Err(if lower.starts_with("https://") {
            format!("--url {url}: only http:// URLs are supported (no TLS here: push to a local agent or proxy that forwards over TLS)")
        } else {
            format!("--url {url}: expected http://HOST[:PORT][/PATH]")
        });
    };
    if rest.contains(['?', '#']) {
        return Err(format!("--url {url}: a query or fragment is not supported"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "--url {url}: credentials in the URL are not supported"
        ));
    }
    if authority.is_empty() || authority.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("--url {url}: no host"));
    }
    if path.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(format!("--url {url}: spaces in the path"));
    }
    // A port is after the last ':' unless that is inside an IPv6 literal (`[::1]`).
    let has_port = authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'));
    let connect = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((authority.to_string(), connect, path.to_string()))
}

/// `service{k=v,…}` from `--service` and `--labels` (each `k=v,k=v`; repeatable).
fn app_name(service: &str, labels: &[String]) -> Result<String, String> {
    let bad_value = |s: &str| s.contains(|c: char| "{},=\"".contains(c) || c.is_control());
    if service.is_empty() || bad_value(service) || service.contains(char::is_whitespace) {
        return Err(format!(
            "--service {service:?}: a name without spaces, braces, commas, quotes or '='"
        ));
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in labels.iter().flat_map(|l| l.split(',')) {
        if item.is_empty() {
            continue;
        }
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("--labels: '{item}' is not KEY=VALUE"));
        };
        let key_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !k.starts_with("__");
        if !key_ok {
            return Err(format!(
                "--labels: '{k}' is not a label name (letters, digits and '_', not starting with a digit or '__')"
            ));
        }
        if v.is_empty() || bad_value(v) {
            return Err(format!(
                "--labels: the value of '{k}' must be non-empty, without braces, commas, quotes or '='"
            ));
        }
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v.to_string(),
            None => pairs.push((k.to_string(), v.to_string())),
        }
    }
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(format!("{service}{{{}}}", inner.join(",")))
}

/// One profile to send.
struct Job {
    /// The file's name, for messages.
    label: String,
    /// The gzipped pprof.
    body: Vec<u8>,
    from: u64,
    until: u64,
    /// The window's length, for messages.
    length: Duration,
    /// Allocated and live bytes of the window, for messages.
    alloc_bytes: f64,
    live_bytes: f64,
}

/// Why a request failed.
enum Failure {
    /// Worth another try (no connection, 429, 5xx), after at least this long if the server said.
    Retry(String, Option<Duration>),
    /// The server refused it: trying again will not help.
    Refused(String),
}

/// What the sender did.
#[derive(Default, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) sent: usize,
    pub(crate) failed: usize,
    pub(crate) dropped: usize,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
    dropped: usize,
}

impl QueueState {
    /// Appends `job`; beyond `cap` waiting jobs the oldest is dropped and returned.
    fn push_bounded(&mut self, cap: usize, job: Job) -> Option<Job> {
        let dropped = if self.jobs.len() >= cap {
            self.dropped += 1;
            self.jobs.pop_front()
        } else {
            None
        };
        self.jobs.push_back(job);
        dropped
    }
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

/// The sender thread and its bounded queue.
struct Sender {
    queue: Arc<Queue>,
    cap: usize,
    thread: JoinHandle<Tally>,
}

impl Sender {
    fn start(cfg: Arc<Config>) -> Result<Sender, String> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
        });
        let q = Arc::clone(&queue);
        let cap = cfg.queue;
        let thread = std::thread::Builder::new()
            .name("push".into())
            .spawn(move || send_loop(&cfg, &q))
            .map_err(|e| format!("cannot start the sender thread: {e}"))?;
        Ok(Sender { queue, cap, thread })
    }

    /// Queues a job, waiting while the queue is full (profiles given on the command line are
    /// not dropped).
    fn send_waiting(&self, job: Job) {
        let mut s = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.jobs.len() >= self.cap {
            s = self.queue.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.jobs.push_back(job);
        self.queue.ready.notify_all();
    }

    /// Queues a job; when the queue is full, the oldest waiting job is dropped.
    fn send(&self, job: Job) {
        let mut s = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = s.push_bounded(self.cap, job) {
            eprintln!(
                "sampalloc: warning: push queue full ({} profiles waiting): dropped {}, its window's allocations are lost",
                self.cap, old.label
            );
        }
        self.queue.ready.notify_all();
    }

    /// Sends what is queued and stops.
    fn finish(self) -> Tally {
        {
            let mut s = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
            s.closed = true;
            self.queue.ready.notify_all();
        }
        let mut t = self.thread.join().unwrap_or_default();
        t.dropped = self
            .queue
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped;
        t
    }
}

fn send_loop(cfg: &Config, q: &Queue) -> Tally {
    let mut tally = Tally::default();
    // Once a job gave up on an unreachable server while closing, the rest get one try each.
    let mut server_down = false;
    loop {
        let (job, closing) = {
            let mut s = q.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(j) = s.jobs.pop_front() {
                    q.ready.notify_all();
                    break (j, s.closed);
                }
                if s.closed {
                    return tally;
                }
                s = q.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        };
        let attempts = if closing && server_down {
            1
        } else {
            cfg.attempts
        };
        match deliver(cfg, &job, attempts) {
            Ok(()) => {
                tally.sent += 1;
                server_down = false;
                eprintln!(
                    "sampalloc: pushed {}: {} allocated in {:.2} s to {} UTC, {} in use",
                    job.label,
                    mib(job.alloc_bytes),
                    job.length.as_secs_f64(),
                    clock(job.until),
                    mib(job.live_bytes)
                );
            }
            Err((msg, gave_up_retrying)) => {
                tally.failed += 1;
                server_down |= gave_up_retrying;
                eprintln!("sampalloc: error: push of {}: {msg}", job.label);
            }
        }
    }
}

/// `HH:MM:SS` (UTC) of a Unix time.
fn clock(secs: u64) -> String {
    let d = secs % 86_400;
    format!("{:02}:{:02}:{:02}", d / 3600, d / 60 % 60, d % 60)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

/// Sends one job, retrying what is worth retrying. Err: the message, and whether retries ran out.
fn deliver(cfg: &Config, job: &Job, attempts: u32) -> Result<(), (String, bool)> {
    let mut delay = BACKOFF_FIRST;
    for attempt in 1..=attempts {
        match post(cfg, job) {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(m)) => return Err((format!("the server refused it: {m}"), false)),
            Err(Failure::Retry(m, after)) => {
                if attempt == attempts {
                    return Err((format!("giving up after {attempts} attempt(s): {m}"), true));
                }
                let wait = after.unwrap_or(delay).min(BACKOFF_MAX);
                eprintln!(
                    "sampalloc: push of {} failed ({m}); retrying in {:.1} s (attempt {} of {attempts})",
                    job.label,
                    wait.as_secs_f64(),
                    attempt + 1
                );
                std::thread::sleep(wait);
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    }
    Err(("no attempt made".into(), false))
}

/// A boundary that does not occur in the parts.
fn boundary(parts: &[&[u8]]) -> String {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    loop {
        // splitmix64
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = format!("sampalloc-{z:016x}{:016x}", z.rotate_left(17) ^ seed);
        if !parts
            .iter()
            .any(|p| p.windows(b.len()).any(|w| w == b.as_bytes()))
        {
            return b;
        }
    }
}

/// The multipart body: `profile` and `sample_type_config`.
fn multipart(profile: &[u8]) -> (String, Vec<u8>) {
    let config = SAMPLE_TYPE_CONFIG.as_bytes();
    let b = boundary(&[profile, config]);
    let mut body = Vec::with_capacity(profile.len() + config.len() + 512);
    let mut part = |name: &str, file: &str, ty: &str, data: &[u8]| {
        body.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: {ty}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    };
    part(
        "profile",
        "profile.pprof",
        "application/octet-stream",
        profile,
    );
    part(
        "sample_type_config",
        "sample_type_config.json",
        "application/json",
        config,
    );
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

/// One `POST` of the job.
fn post(cfg: &Config, job: &Job) -> Result<(), Failure> {
    let query = format!(
        "name={}&from={}&until={}&format=pprof&spyName=sampalloc",
        crate::serve::url_escape(&cfg.name),
        job.from,
        job.until
    );
    let (content_type, body) = multipart(&job.body);
    let head = format!(
        "POST {}?{query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sampalloc/{}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        if cfg.path.is_empty() { "/" } else { &cfg.path },
        cfg.authority,
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let url = cfg.url();
    let retry = |m: String| Failure::Retry(m, None);
    let addrs: Vec<_> = cfg
        .connect
        .to_socket_addrs()
        .map_err(|e| retry(format!("cannot resolve {}: {e}", cfg.authority)))?
        .collect();
    let mut last = format!("cannot resolve {}: no address", cfg.authority);
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {} ({a}): {e}", cfg.authority),
        }
    }
    let mut s = stream.ok_or_else(|| retry(last))?;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let sent = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(&body))
        .and_then(|_| s.flush());
    // A server may answer (and close) before reading the whole body: read its answer anyway.
    let mut answer = Vec::new();
    let read = s.take(MAX_ANSWER).read_to_end(&mut answer);
    if answer.is_empty() {
        let why = match (sent, read) {
            (Err(e), _) => format!("sending to {url}: {e}"),
            (_, Err(e)) => format!("reading the answer of {url}: {e}"),
            _ => format!("{url} closed the connection without an answer"),
        };
        return Err(retry(why));
    }
    let (status, reason, headers, body) =
        parse_answer(&answer).ok_or_else(|| retry(format!("{url} sent a malformed answer")))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let line = first_line(&body);
    let msg = format!("{url} answered {status} {reason}: {line}");
    if status == 429 || status >= 500 {
        let after = header(&headers, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Failure::Retry(msg, after))
    } else {
        Err(Failure::Refused(msg))
    }
}

/// Status, reason, header lines and (de-chunked) body of an HTTP/1.x answer.
fn parse_answer(a: &[u8]) -> Option<(u16, String, Vec<String>, Vec<u8>)> {
    let end = a.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&a[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let reason = parts.next().unwrap_or("").trim().to_string();
    let headers: Vec<String> = lines.map(str::to_string).collect();
    let mut body = a[end + 4..].to_vec();
    if header(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        body = dechunk(&body);
    }
    Some((status, reason, headers, body))
}

fn header<'a>(headers: &'a [String], name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A chunked body's data (as much as is well formed).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0) else {
            break;
        };
        let start = eol + 2;
        let Some(chunk) = b.get(start..start + size) else {
            out.extend_from_slice(&b[start.min(b.len())..]);
            break;
        };
        out.extend_from_slice(chunk);
        b = b.get(start + size + 2..).unwrap_or_default();
    }
    out
}

/// The body's first non-empty line, at most 200 characters (or a note that it is empty).
fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) if l.chars().count() > 200 => {
            format!("{}…", l.chars().take(200).collect::<String>())
        }
        Some(l) => l.to_string(),
        None => "(no body)".to_string(),
    }
}

/// Seconds since the epoch.
fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// When process `pid` started, if it is running: its start in clock ticks after boot
/// (`/proc/<pid>/stat`) against the time since boot now (`/proc/uptime`, to 10 ms; the boot
/// time of `/proc/stat` is whole seconds).
fn process_start(pid: u32) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, starttime 22.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let now = SystemTime::now();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    let age = uptime - ticks as f64 / hz as f64;
    now.checked_sub(Duration::try_from_secs_f64(age.max(0.0)).ok()?)
}

/// Turns successive dumps into windowed profiles.
struct Windows {
    cfg: Arc<Config>,
    /// Per process: its last dump, that dump's time and sequence number.
    prev: HashMap<u32, (parse::Profile, SystemTime, u64)>,
    /// The start of a process whose start cannot be read (it exited): `run --push`'s launch.
    default_start: Option<SystemTime>,
    sym: Option<(Vec<parse::Mapping>, Symbolizer)>,
}

impl Windows {
    fn new(cfg: Arc<Config>, default_start: Option<SystemTime>) -> Windows {
        Windows {
            cfg,
            prev: HashMap::new(),
            default_start,
            sym: None,
        }
    }

    /// Takes `path` as the last dump of its process without sending it (what was there before
    /// `--watch` started).
    fn baseline(&mut self, path: &Path) {
        if let (Ok(p), Some((pid, seq))) = (parse::read(path), order_key(path)) {
            let t = file_time(path).unwrap_or_else(SystemTime::now);
            self.prev.insert(pid, (p, t, seq));
        }
    }

    /// The job for the dump at `path`.
    fn job(&mut self, path: &Path) -> Result<Job, String> {
        let cur = parse::read(path)?;
        let until_t = file_time(path).unwrap_or_else(SystemTime::now);
        let name = path
            .file_name()
            .and_then(|n| ProfileName::parse(n.as_bytes()));
        let pid = name.as_ref().map(|n| n.pid);
        let seq = name.as_ref().map_or(0, |n| n.seq);
        // The same process: a later sequence number and cumulative counts that did not go
        // down (else a new process under a reused pid).
        let prev = pid
            .and_then(|p| self.prev.get(&p))
            .filter(|(p, _, s)| *s < seq && window::follows(p, &cur));
        let from_t = match prev {
            Some((_, t, _)) => *t,
            None => pid
                .and_then(process_start)
                .filter(|s| *s <= until_t)
                .or(self.default_start.filter(|s| *s <= until_t))
                .unwrap_or(until_t),
        };
        let w = window::window(prev.map(|(p, _, _)| p), &cur);
        let mut msg = if self.cfg.symbolize {
            if self.sym.as_ref().is_some_and(|(m, _)| *m != w.mappings) {
                self.sym = None;
            }
            let (_, s) = self
                .sym
                .get_or_insert_with(|| (w.mappings.clone(), Symbolizer::new(&w, None)));
            let rows = analysis::resolve(&w, s);
            for warning in s.take_warnings() {
                eprintln!("sampalloc: warning: {warning}");
            }
            pprof::encode(&w, &rows)
        } else {
            pprof::encode_unsymbolized(&w)
        };
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        };
        msg.time_nanos = nanos(until_t);
        msg.duration_nanos = nanos(until_t).saturating_sub(nanos(from_t)).max(0);
        let body = pprof::gzip(&msg)?;
        let total = w.total();
        let is_final = name.is_some_and(|n| n.kind == sampalloc::profile::kind::FINAL);
        match pid {
            // The process is gone: forget it.
            Some(p) if is_final => {
                self.prev.remove(&p);
            }
            Some(p) => {
                self.prev.insert(p, (cur, until_t, seq));
            }
            None => {}
        }
        Ok(Job {
            label: path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            body,
            from: secs(from_t),
            until: secs(until_t),
            length: until_t.duration_since(from_t).unwrap_or_default(),
            alloc_bytes: total.alloc_bytes,
            live_bytes: total.live_bytes,
        })
    }
}

fn file_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// (pid, seq) of a profile's file name.
fn order_key(path: &Path) -> Option<(u32, u64)> {
    let n = ProfileName::parse(path.file_name()?.as_bytes())?;
    Some((n.pid, n.seq))
}

/// `sampalloc push`.
pub(crate) fn push(a: PushArgs) -> Result<(), String> {
    let cfg = Arc::new(Config::new(
        &a.url,
        &a.service,
        &a.labels,
        !a.no_symbolize,
        a.queue,
        a.attempts,
    )?);
    let tally = match &a.watch {
        Some(dir) => {
            install_stop_handlers();
            eprintln!(
                "sampalloc: watching {} for new profiles, pushing to {} as {} (stop with Ctrl-C or SIGTERM)",
                dir.display(),
                cfg.url(),
                cfg.name
            );
            watch(cfg, dir, &STOP, None)?
        }
        None => {
            eprintln!(
                "sampalloc: pushing {} profile(s) to {} as {}",
                a.profiles.len(),
                cfg.url(),
                cfg.name
            );
            push_files(cfg, &a.profiles)?
        }
    };
    summary(&tally)
}

/// The line closing a push; Err if anything was not delivered.
pub(crate) fn summary(t: &Tally) -> Result<(), String> {
    let lost = t.failed + t.dropped;
    if lost > 0 {
        return Err(format!(
            "{lost} of {} profile(s) not delivered ({} refused or unreachable, {} dropped from a full queue)",
            t.sent + lost,
            t.failed,
            t.dropped
        ));
    }
    eprintln!("sampalloc: {} profile(s) pushed", t.sent);
    Ok(())
}

/// Pushes the given files, each process's in sequence order.
fn push_files(cfg: Arc<Config>, files: &[PathBuf]) -> Result<Tally, String> {
    let mut files: Vec<&PathBuf> = files.iter().collect();
    // Named profiles by process and sequence; others after them, as given.
    files.sort_by_key(|p| order_key(p).map_or((1, 0, 0), |(pid, seq)| (0, pid, seq)));
    let sender = Sender::start(Arc::clone(&cfg))?;
    let mut windows = Windows::new(cfg, None);
    let mut unreadable = 0;
    for f in files {
        match windows.job(f) {
            Ok(job) => sender.send_waiting(job),
            Err(e) => {
                eprintln!("sampalloc: error: {e}");
                unreadable += 1;
            }
        }
    }
    let mut t = sender.finish();
    t.failed += unreadable;
    Ok(t)
}

/// Set by SIGINT and SIGTERM in `push --watch`.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`]; a second one kills as usual (`SA_RESETHAND`).
fn install_stop_handlers() {
    install_handlers(&[libc::SIGINT, libc::SIGTERM]);
}

/// `run --push`: the first SIGINT (Ctrl-C, which the terminal sends the program too) does not
/// stop `run`, so that it pushes the program's final profile once the program exits; a second
/// one stops it as usual.
pub(crate) fn survive_one_interrupt() {
    install_handlers(&[libc::SIGINT]);
}

fn install_handlers(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
        // async-signal-safe; sigemptyset and sigaction get valid pointers.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A profile seen but not yet taken: its size at the last look, and how often it was the same.
struct Pending {
    size: u64,
    stable: u32,
    /// Parse failures so far (a file still being written may not parse yet).
    failures: u32,
}

/// Watches `dir` until `stop`, then takes what was still being written and sends what is
/// queued. Profiles already there when it starts are not sent: they are the base of their
/// process's next window.
fn watch(
    cfg: Arc<Config>,
    dir: &Path,
    stop: &AtomicBool,
    default_start: Option<SystemTime>,
) -> Result<Tally, String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let sender = Sender::start(Arc::clone(&cfg))?;
    let mut windows = Windows::new(cfg, default_start);
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut pending: HashMap<OsString, Pending> = HashMap::new();
    // What is there already: the newest of each process is its base.
    let mut newest: HashMap<u32, (u64, PathBuf)> = HashMap::new();
    for (name, path, _) in list(dir) {
        if let Some((pid, seq)) = order_key(&path) {
            if newest.get(&pid).is_none_or(|(s, _)| *s < seq) {
                newest.insert(pid, (seq, path.clone()));
            }
        }
        seen.insert(name);
    }
    for (_, path) in newest.values() {
        windows.baseline(path);
    }
    let mut stopping_since: Option<std::time::Instant> = None;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && stopping_since.is_none() {
            stopping_since = Some(std::time::Instant::now());
        }
        look(dir, &mut seen, &mut pending, &mut windows, &sender);
        if let Some(t) = stopping_since {
            if pending.is_empty() || t.elapsed() >= FINAL_SETTLE {
                for name in pending.keys() {
                    eprintln!(
                        "sampalloc: warning: {} was still being written when the watch stopped; not sent",
                        name.to_string_lossy()
                    );
                }
                break;
            }
        }
        std::thread::sleep(POLL);
    }
    Ok(sender.finish())
}

/// The regular files of `dir` named as profiles: (name, path, size).
fn list(dir: &Path) -> Vec<(OsString, PathBuf, u64)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name();
            ProfileName::parse(name.as_bytes())?;
            // symlink_metadata: a symlink is not a regular file, and is not taken.
            let m = e.path().symlink_metadata().ok()?;
            m.is_file().then(|| (name, e.path(), m.len()))
        })
        .collect()
}

/// One look at the directory: files whose size settled are sent, each process's in order.
fn look(
    dir: &Path,
    seen: &mut HashSet<OsString>,
    pending: &mut HashMap<OsString, Pending>,
    windows: &mut Windows,
    sender: &Sender,
) {
    let mut ready: Vec<(u32, u64, OsString, PathBuf)> = Vec::new();
    let mut waiting: HashMap<u32, u64> = HashMap::new();
    for (name, path, size) in list(dir) {
        if seen.contains(&name) {
            continue;
        }
        let Some((pid, seq)) = order_key(&path) else {
            continue;
        };
        let p = pending.entry(name.clone()).or_insert(Pending {
            size: u64::MAX,
            stable: 0,
            failures: 0,
        });
        if size > 0 && p.size == size {
            p.stable += 1;
        } else {
            p.size = size;
            p.stable = 0;
        }
        if p.stable >= 1 {
            ready.push((pid, seq, name, path));
        } else {
            let w = waiting.entry(pid).or_insert(seq);
            *w = (*w).min(seq);
        }
    }
    ready.sort();
    for (pid, seq, name, path) in ready {
        // An earlier dump of the same process still being written goes first.
        if waiting.get(&pid).is_some_and(|&w| w < seq) {
            continue;
        }
        match windows.job(&path) {
            Ok(job) => {
                pending.remove(&name);
                seen.insert(name);
                sender.send(job);
            }
            Err(e) => {
                let p = pending.get_mut(&name).expect("pending");
                p.failures += 1;
                p.stable = 0;
                if p.failures >= 10 {
                    eprintln!("sampalloc: error: not sent: {e}");
                    pending.remove(&name);
                    seen.insert(name);
                } else {
                    let w = waiting.entry(pid).or_insert(seq);
                    *w = (*w).min(seq);
                }
            }
        }
    }
}

/// `sampalloc run --push`: the watcher on the run's directory, in a thread.
pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Tally, String>>,
}

impl Watcher {
    /// Starts watching `dir`. `started`: when the program was launched (the first window's
    /// start when its process is gone by the time its first profile is read).
    pub(crate) fn start(cfg: Config, dir: &Path, started: SystemTime) -> Result<Watcher, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let dir = dir.to_path_buf();
        let cfg = Arc::new(cfg);
        eprintln!(
            "sampalloc: pushing each profile to {} as {}",
            cfg.url(),
            cfg.name
        );
        let thread = std::thread::Builder::new()
            .name("push-watch".into())
            .spawn(move || watch(cfg, &dir, &flag, Some(started)))
            .map_err(|e| format!("cannot start the push thread: {e}"))?;
        Ok(Watcher { stop, thread })
    }

    /// Takes the profiles written meanwhile (the final one included), sends them and stops.
    pub(crate) fn finish(self) -> Result<Tally, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| "the push thread failed".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://localhost:4040").unwrap(),
            ("localhost:4040".into(), "localhost:4040".into(), "".into())
        );
        assert_eq!(
            parse_url("HTTP://h/base/").unwrap(),
            ("h".into(), "h:80".into(), "/base".into())
        );
        assert_eq!(parse_url("http://[::1]").unwrap().1, "[::1]:80");
        assert_eq!(parse_url("http://[::1]:9").unwrap().1, "[::1]:9");
        assert!(parse_url("https://h").unwrap_err().contains("only http://"));
        assert!(parse_url("http://u:p@h").is_err());
        assert!(parse_url("http://h/?x=1").is_err());
        assert!(parse_url("ftp://h").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(app_name("svc", &[]).unwrap(), "svc{}");
        let l = ["env=prod,region=eu".to_string(), "env=dev".to_string()];
        assert_eq!(app_name("svc", &l).unwrap(), "svc{env=dev,region=eu}");
        assert!(app_name("a b", &[]).is_err());
        assert!(app_name("a{", &[]).is_err());
        assert!(app_name("s", &["__name__=x".into()]).is_err());
        assert!(app_name("s", &["1k=x".into()]).is_err());
        assert!(app_name("s", &["k=a}b".into()]).is_err());
        assert!(app_name("s", &["novalue".into()]).is_err());
        assert_eq!(crate::serve::url_escape("svc{a=b}"), "svc%7Ba%3Db%7D");
    }

    #[test]
    fn answers() {
        let a = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n\nbad name\nmore\n";
        let (s, r, _, b) = parse_answer(a).unwrap();
        assert_eq!(
            (s, r.as_str(), first_line(&b).as_str()),
            (400, "Bad Request", "bad name")
        );
        let c = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n\r\n5\r\nbusy \r\n3\r\nnow\r\n0\r\n\r\n";
        let (s, _, h, b) = parse_answer(c).unwrap();
        assert_eq!((s, b.as_slice()), (503, &b"busy now"[..]));
        assert_eq!(header(&h, "retry-after"), Some("2"));
        assert!(parse_answer(b"garbage").is_none());
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let job = |label: &str| Job {
            label: label.into(),
            body: Vec::new(),
            from: 0,
            until: 0,
            length: Duration::ZERO,
            alloc_bytes: 0.0,
            live_bytes: 0.0,
        };
        let mut q = QueueState::default();
        assert!(q.push_bounded(2, job("a")).is_none());
        assert!(q.push_bounded(2, job("b")).is_none());
        assert_eq!(q.push_bounded(2, job("c")).unwrap().label, "a");
        let left: Vec<&str> = q.jobs.iter().map(|j| j.label.as_str()).collect();
        assert_eq!((left, q.dropped), (vec!["b", "c"], 1));
    }

    #[test]
    fn multipart_parts() {
        let (ct, body) = multipart(b"\x1f\x8bDATA");
        let b = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with(&format!("--{b}\r\n")));
        assert!(text.ends_with(&format!("--{b}--\r\n")));
        assert!(text.contains("name=\"profile\""));
        assert!(text.contains("name=\"sample_type_config\""));
        let cfg: serde_json::Value = serde_json::from_str(SAMPLE_TYPE_CONFIG).unwrap();
        assert_eq!(cfg["alloc_space"]["units"], "bytes");
        assert_eq!(cfg["inuse_space"]["aggregation"], "average");
    }
}
