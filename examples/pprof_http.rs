//! A Rust service's `/debug/pprof/heap` route, with the standard library only: the live heap
//! of this process as gzipped pprof, for `go tool pprof`, Pyroscope, Parca or Grafana Alloy.
//!
//! ```text
//! cargo run --release --features pprof --example pprof_http [-- 127.0.0.1:6060]
//! go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap
//! ```
//!
//! It grows a cache (the "leak") to 64 MiB and serves until killed. Loopback only: a heap profile
//! shows the process's memory map, so keep it off public interfaces.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[global_allocator]
static GLOBAL: sampalloc::SampAlloc = sampalloc::SampAlloc;

/// Answers one request: `GET /debug/pprof/heap` gets the profile, `/debug/pprof/symbol` the
/// names `go tool pprof` asks for (as Go's `net/http/pprof` serves them), anything else a 404.
fn handle(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0usize;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0).min(1 << 20);
            }
        }
        line.clear();
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut stream = reader.into_inner();
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, content_type, reply) = match path {
        "/debug/pprof/heap" => (
            "200 OK",
            "application/octet-stream",
            sampalloc::profile::pprof()?,
        ),
        "/debug/pprof/symbol" => {
            let asked = if body.is_empty() {
                query.to_string()
            } else {
                String::from_utf8_lossy(&body).into_owned()
            };
            let names = sampalloc::profile::pprof_symbol(&asked);
            ("200 OK", "text/plain", names.into_bytes())
        }
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        reply.len()
    )?;
    if request_line.starts_with("HEAD ") {
        return Ok(());
    }
    stream.write_all(&reply)
}

/// The service's work: a cache that grows, 4 MiB a call.
#[inline(never)]
fn fill_cache(cache: &mut Vec<Vec<u8>>) {
    for i in 0..256 {
        cache.push(vec![i as u8; 16 << 10]);
    }
}

fn main() -> std::io::Result<()> {
    // Sample an allocation every 512 KiB on average: cheap enough to leave on in production.
    sampalloc::configure("prof:true,prof_active:true,lg_prof_sample:19").expect("configuration");
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6060".to_string());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("serving http://{}/debug/pprof/heap", listener.local_addr()?);
    std::thread::spawn(|| {
        let mut cache = Vec::new();
        while cache.len() < 4096 {
            fill_cache(&mut cache);
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::park(); // keep the cache
        drop(cache);
    });
    for stream in listener.incoming() {
        if let Err(e) = stream.and_then(handle) {
            eprintln!("request failed: {e}");
        }
    }
    Ok(())
}
