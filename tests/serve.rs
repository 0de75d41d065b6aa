//! `sampalloc serve` on a directory holding the final profile of `tests/profile/leaks.c` (three
//! leak sites of known size) run under the preload: `go tool pprof -top` reads the newest
//! profile from `/debug/pprof/heap` and shows the three leak sites with their bytes, and
//! `/debug/pprof/allocs` defaults to allocated bytes; `/` lists the profile and links it;
//! a path out of the directory, a symlink under a profile's name and a non-profile name are
//! 404, POST is 405; a non-loopback `--listen` is refused without `--public`.

mod common;

use common::heap_profile::profiles;
use common::profile_programs::{cc, go_pprof, pprof_top_rows, run_prof, NO_FP};
use common::{command, have, kill_group, Scratch};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Mebibytes leaked per site: at `lg_prof_sample:14` each site holds about 1,000 samples, so
/// the sampling error (about 3 %) is far inside the 15 % the test allows.
const LEAK_MIB: u32 = 16;

/// The server, killed (its process group) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Starts `sampalloc serve --listen 127.0.0.1:0 dir` and reads the bound address from its
/// first line of output (within 20 s).
fn start(dir: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sampalloc"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("start sampalloc serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(l) => l,
        Err(_) => {
            kill_group(&mut child);
            panic!("sampalloc serve printed no address within 20 s");
        }
    };
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, addr }
}

/// Sends a raw request; returns (status, head, body).
fn request(addr: &str, method: &str, target: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("read response");
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status in {head:?}"));
    (status, head, all[split + 4..].to_vec())
}

/// `go tool pprof -top URL`: (flat MiB, name) per line, and the type line.
fn pprof_top_url(url: &str) -> (Vec<(f64, String)>, String) {
    let r = go_pprof(["-top", url]);
    eprintln!("go tool pprof -top {url}:\n{}", r.stdout);
    let ty = r
        .stdout
        .lines()
        .find(|l| l.starts_with("Type:"))
        .unwrap_or("")
        .to_string();
    (pprof_top_rows(&r.stdout), ty)
}

#[test]
fn serve_gives_pprof_the_newest_profile_and_nothing_else() {
    if !have("cc") || !have("go") {
        return;
    }
    let started = Instant::now();
    let build = Scratch::new("serve-build");
    let exe = cc(&build, &["leaks.c"], "leaks", NO_FP);
    let dir = Scratch::new("serve-dir");
    let conf = format!(
        "prof:true,prof_final:true,lg_prof_sample:14,prof_prefix:{}",
        dir.path("leaks").display()
    );
    let r = run_prof(command(&exe, [LEAK_MIB.to_string()]), &conf);
    r.assert_ok("leaks", "leaks ok");
    let finals = profiles(&dir.0, ".f.heap");
    assert_eq!(finals.len(), 1, "{finals:?}");
    let name = finals[0].file_name().unwrap().to_str().unwrap().to_string();
    // A symlink named as a newer profile, to a file outside the directory, and a file
    // outside it that `..` would reach.
    let outside = Scratch::new("serve-outside");
    std::fs::write(outside.path("secret.1.1.f.heap"), "secret\n").unwrap();
    std::os::unix::fs::symlink(
        outside.path("secret.1.1.f.heap"),
        dir.path("leaks.1.99.f.heap"),
    )
    .unwrap();

    let server = start(&dir.0);
    let addr = server.addr.as_str();

    // pprof reads the newest profile (the symlink is not a profile) with the leak sites.
    let (top, ty) = pprof_top_url(&format!("http://{addr}/debug/pprof/heap"));
    assert_eq!(ty, "Type: inuse_space");
    for site in ["leak_small", "leak_medium", "leak_large"] {
        let (flat, _) = top
            .iter()
            .find(|t| t.1 == site)
            .unwrap_or_else(|| panic!("pprof does not list {site}: {top:?}"));
        let truth = LEAK_MIB as f64;
        assert!(
            (flat - truth).abs() < 0.15 * truth,
            "{site}: {flat} MiB, truth {truth}"
        );
    }
    assert!(
        top.iter().take(3).all(|t| t.1.starts_with("leak_")),
        "the top three are the leaks: {top:?}"
    );
    // allocs: allocated bytes by default, where the freed churn dominates.
    let (top, ty) = pprof_top_url(&format!("http://{addr}/debug/pprof/allocs"));
    assert_eq!(ty, "Type: alloc_space");
    assert_eq!(top[0].1, "churn", "{top:?}");

    let (status, head, _) = request(addr, "HEAD", "/debug/pprof/heap");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: application/octet-stream"),
        "{head}"
    );

    // The index lists the profile and links it; the link serves its text.
    let (status, _, body) = request(addr, "GET", "/");
    let html = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(&format!("<a href=\"/profile/{name}\">{name}</a>")),
        "{html}"
    );
    assert!(!html.contains("leaks.1.99.f.heap"), "{html}");
    let (status, _, body) = request(addr, "GET", &format!("/profile/{name}"));
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(&finals[0]).unwrap());
    let (status, head, body) = request(addr, "GET", &format!("/flamegraph/{name}"));
    assert_eq!(status, 200, "{head}");
    assert!(String::from_utf8_lossy(&body).contains("leak_small"));

    // Refused: out of the directory, through a symlink, not a profile name, not GET.
    let rel = outside.0.file_name().unwrap().to_str().unwrap();
    for target in [
        format!("/profile/../{rel}/secret.1.1.f.heap"),
        format!("/profile/..%2F{rel}%2Fsecret.1.1.f.heap"),
        "/profile/leaks.1.99.f.heap".to_string(),
        format!("/profile/{name}.mem"),
        "/profile/".to_string(),
        "/etc/passwd".to_string(),
    ] {
        let (status, _, body) = request(addr, "GET", &target);
        assert_eq!(status, 404, "{target}: {}", String::from_utf8_lossy(&body));
    }
    for method in ["POST", "PUT", "DELETE"] {
        let (status, head, _) = request(addr, method, "/");
        assert_eq!(status, 405, "{method}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
    }
    drop(server);

    // Loopback only unless --public.
    let o = Command::new(env!("CARGO_BIN_EXE_sampalloc"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .arg(&dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--public"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("serve: {:.1} s", started.elapsed().as_secs_f64());
}
