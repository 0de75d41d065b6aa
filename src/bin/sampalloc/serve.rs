//! `sampalloc serve`: a small read-only HTTP/1.1 server over a directory of profiles, so that
//! `go tool pprof http://HOST:PORT/debug/pprof/heap` (and Pyroscope, Parca, Grafana scrapers)
//! read the newest profile as they read a Go program's.
//!
//! - `/debug/pprof/heap`, `/debug/pprof/allocs`: the newest profile of the directory (highest
//!   sequence number, then newest file), as `sampalloc pprof` writes it (gzipped
//!   `profile.proto`); `allocs` names `alloc_space` the default sample type.
//! - `/`: an HTML index of the profiles; `/profile/NAME`: one profile's heap_v2 text;
//!   `/flamegraph/NAME`: its flame graph of live bytes (SVG).
//!
//! Safety rules: GET and HEAD only (405 otherwise); a loopback address unless `--public`; only
//! names of the directory that parse as profile names (no `/`, `..` or NUL), opened with
//! `O_NOFOLLOW` and served only if a regular file; anything else is 404. One thread per
//! connection (at most [`MAX_CONNECTIONS`] at once), one request per connection.

use crate::ServeArgs;
use sampalloc::analysis::{self, flamegraph, parse, pprof, symbolize::Symbolizer};
use sampalloc::profile::ProfileName;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; more are answered 503.
const MAX_CONNECTIONS: usize = 16;
/// The longest request head read.
const MAX_HEAD: usize = 16 << 10;
/// Read and write timeout per connection.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// `sampalloc serve`.
pub(crate) fn serve(a: ServeArgs) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = a
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("bad --listen {}: {e}", a.listen))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("bad --listen {}: no address", a.listen));
    }
    if !a.public {
        if let Some(bad) = addrs.iter().find(|s| !s.ip().is_loopback()) {
            return Err(format!(
                "refusing to listen on {bad}: not a loopback address (profiles show the program's memory map and code); add --public to allow it"
            ));
        }
    }
    let meta = std::fs::metadata(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", a.dir.display()));
    }
    let listener =
        TcpListener::bind(&addrs[..]).map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
    crate::emit(
        format!(
            "sampalloc: serving {} on http://{local}/ (go tool pprof http://{local}/debug/pprof/heap)\n",
            a.dir.display()
        )
        .as_bytes(),
    )?;
    let dir = Arc::new(a.dir);
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = respond(&mut stream, false, &text(503, "too many connections\n"));
            continue;
        }
        let (dir, mine) = (Arc::clone(&dir), Arc::clone(&busy));
        let spawned = std::thread::Builder::new()
            .name("serve".into())
            .spawn(move || {
                handle(stream, &dir);
                mine.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Ok(())
}

/// A response: status, content type, body.
struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

fn text(status: u16, body: &str) -> Response {
    Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes().to_vec(),
    }
}

fn not_found() -> Response {
    text(404, "not found\n")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn respond(stream: &mut TcpStream, head_only: bool, r: &Response) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&r.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Reads one request head and answers it.
fn handle(stream: TcpStream, dir: &Path) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        let _ = respond(&mut writer, false, &text(400, "bad request\n"));
        return;
    }
    // Drain the headers (to the blank line) so the client sees its request read.
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        let _ = respond(&mut writer, false, &text(400, "bad request\n"));
        return;
    };
    let head_only = method == "HEAD";
    let r = if method != "GET" && !head_only {
        text(405, "only GET and HEAD\n")
    } else {
        route(dir, target.split(['?', '#']).next().unwrap_or(""))
    };
    let _ = respond(&mut writer, head_only, &r);
}

fn route(dir: &Path, path: &str) -> Response {
    let result = match path {
        "/" => index(dir),
        "/debug/pprof/heap" => newest_pprof(dir, None),
        "/debug/pprof/allocs" => newest_pprof(dir, Some("alloc_space")),
        _ => {
            if let Some(name) = path.strip_prefix("/profile/") {
                raw(dir, name)
            } else if let Some(name) = path.strip_prefix("/flamegraph/") {
                flame(dir, name)
            } else {
                return not_found();
            }
        }
    };
    result.unwrap_or_else(|e| e)
}

/// Whether `name` may be served: one file name of the directory, parsing as a profile name.
fn servable(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\0', '\\'])
        && name != "."
        && !name.contains("..")
        && ProfileName::parse(name.as_bytes()).is_some()
}

/// Opens `dir/name` for reading: never through a symlink, only a regular file.
fn open_profile(dir: &Path, name: &str) -> Result<(std::fs::File, u64), Response> {
    use std::os::unix::fs::OpenOptionsExt;
    if !servable(name) {
        return Err(not_found());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO planted under a profile's name must not hang the thread.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(name))
        .map_err(|_| not_found())?;
    let m = f.metadata().map_err(|_| not_found())?;
    if !m.is_file() {
        return Err(not_found());
    }
    Ok((f, m.len()))
}

fn read_profile_bytes(dir: &Path, name: &str) -> Result<Vec<u8>, Response> {
    let (mut f, len) = open_profile(dir, name)?;
    let mut data = Vec::with_capacity(len as usize);
    f.read_to_end(&mut data)
        .map_err(|e| text(500, &format!("cannot read {name}: {e}\n")))?;
    Ok(data)
}

/// Reads, parses and symbolizes a profile (as `sampalloc pprof` does, through the checked open).
fn load(dir: &Path, name: &str) -> Result<(parse::Profile, Vec<analysis::ResolvedRow>), Response> {
    let data = read_profile_bytes(dir, name)?;
    let mut profile =
        parse::parse(&data).map_err(|e| text(500, &format!("cannot parse {name}: {e}\n")))?;
    let path = dir.join(name);
    profile.pid = parse::pid_from_name(&path);
    profile.path = Some(path);
    let mut s = Symbolizer::new(&profile, None);
    let rows = analysis::resolve(&profile, &mut s);
    for w in s.take_warnings() {
        eprintln!("sampalloc: warning: {w}");
    }
    Ok((profile, rows))
}

/// A profile of the directory: its name, size and kind letter.
struct Entry {
    name: String,
    size: u64,
    kind: u8,
    seq: u64,
    modified: std::time::SystemTime,
}

/// The regular files of `dir` named as profiles, newest last (sequence number, then time).
fn entries(dir: &Path) -> Result<Vec<Entry>, Response> {
    let rd = std::fs::read_dir(dir).map_err(|e| text(500, &format!("cannot list: {e}\n")))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !servable(&name) {
            continue;
        }
        // symlink_metadata: a symlink is not a regular file, and is not listed.
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let Some(p) = ProfileName::parse(name.as_bytes()) else {
            continue;
        };
        let (kind, seq) = (p.kind, p.seq);
        out.push(Entry {
            name,
            size: m.len(),
            kind,
            seq,
            modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
        });
    }
    out.sort_by(|a, b| (a.seq, a.modified, &a.name).cmp(&(b.seq, b.modified, &b.name)));
    Ok(out)
}

fn kind_name(kind: u8) -> &'static str {
    use sampalloc::profile::kind;
    match kind {
        kind::FINAL => "final",
        kind::INTERVAL => "interval",
        kind::HIGH_WATER => "high-water",
        kind::SIGNAL => "signal",
        kind::MANUAL => "manual",
        _ => "other",
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes what is not safe in a URL path segment or a query value (unreserved
/// characters stay).
pub(crate) fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`url_escape`] (and any other percent-encoding); None if malformed.
fn url_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn index(dir: &Path) -> Result<Response, Response> {
    let list = entries(dir)?;
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sampalloc profiles</title></head><body>\n",
    );
    h.push_str(&format!(
        "<h1>Profiles in {}</h1>\n<p>Newest as pprof: <a href=\"/debug/pprof/heap\">/debug/pprof/heap</a> (live bytes), <a href=\"/debug/pprof/allocs\">/debug/pprof/allocs</a> (allocated bytes).</p>\n",
        html_escape(&dir.display().to_string())
    ));
    h.push_str("<table>\n<tr><th>name</th><th>size</th><th>kind</th><th></th></tr>\n");
    for e in list.iter().rev() {
        let (n, u) = (html_escape(&e.name), url_escape(&e.name));
        h.push_str(&format!(
            "<tr><td><a href=\"/profile/{u}\">{n}</a></td><td>{}</td><td>{}</td><td><a href=\"/flamegraph/{u}\">flame graph</a></td></tr>\n",
            e.size,
            kind_name(e.kind)
        ));
    }
    h.push_str("</table>\n</body></html>\n");
    Ok(Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: h.into_bytes(),
    })
}

fn newest_pprof(dir: &Path, default_type: Option<&str>) -> Result<Response, Response> {
    let list = entries(dir)?;
    let Some(newest) = list.last() else {
        return Err(text(404, "no profiles yet\n"));
    };
    let (profile, rows) = load(dir, &newest.name)?;
    let body = pprof::encode_gzip_with_default(&profile, &rows, default_type)
        .map_err(|e| text(500, &format!("{e}\n")))?;
    Ok(Response {
        status: 200,
        content_type: "application/octet-stream",
        body,
    })
}

fn raw(dir: &Path, name: &str) -> Result<Response, Response> {
    let name = url_unescape(name).ok_or_else(not_found)?;
    Ok(Response {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body: read_profile_bytes(dir, &name)?,
    })
}

fn flame(dir: &Path, name: &str) -> Result<Response, Response> {
    let name = url_unescape(name).ok_or_else(not_found)?;
    let (_, rows) = load(dir, &name)?;
    let mut svg = Vec::new();
    flamegraph::write_svg(&rows, false, &format!("Live bytes: {name}"), &mut svg)
        .map_err(|e| text(500, &format!("{e}\n")))?;
    Ok(Response {
        status: 200,
        content_type: "image/svg+xml",
        body: svg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_profile_names_are_servable() {
        assert!(servable("leaks.123.4.f.heap"));
        for bad in [
            "",
            ".",
            "..",
            "../leaks.1.2.f.heap",
            "a/leaks.1.2.f.heap",
            "leaks.1.2.f.heap\0",
            "..leaks.1.2.f.heap",
            "leaks.1.2.f.heap.mem",
            "leaks.1.2.f.heap.peek",
            "passwd",
        ] {
            assert!(!servable(bad), "{bad:?}");
        }
    }

    #[test]
    fn escapes_round_trip() {
        let n = "a b&<x>.1.2.f.heap";
        assert_eq!(url_unescape(&url_escape(n)).as_deref(), Some(n));
        assert_eq!(url_unescape("%2e%2e%2Fx").as_deref(), Some("../x"));
        assert_eq!(url_unescape("%zz"), None);
        assert_eq!(html_escape("<a&\"b'>"), "&lt;a&amp;&quot;b&#39;&gt;");
    }
}
