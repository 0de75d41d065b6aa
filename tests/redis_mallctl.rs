//! Redis (linked against libjemalloc) under `LD_PRELOAD=libsampalloc.so`: its `mallctl` calls
//! must reach sampalloc, so that `INFO memory`, `MEMORY DOCTOR` and `MEMORY PURGE` describe
//! the allocator that actually serves its memory (issue 18).

mod common;

use common::{command, have, kill_group, spawn_logged, wait_bounded, Scratch};
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Runs `redis-cli -p port args…` (bounded).
fn try_cli(port: u16, args: &[&str]) -> common::Run {
    let mut cmd = command("redis-cli", ["-h", "127.0.0.1", "-p", &port.to_string()]);
    cmd.args(args);
    common::run_bounded(cmd, None, Duration::from_secs(60))
}

/// Runs `redis-cli -p port args…` (bounded) and returns its output.
fn cli(port: u16, args: &[&str]) -> String {
    let r = try_cli(port, args);
    assert!(r.status.success(), "redis-cli {args:?}\n{}", r.describe());
    r.stdout
}

fn field(info: &str, name: &str) -> usize {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in INFO memory:\n{info}"))
}

#[test]
fn redis_info_doctor_and_purge_see_sampalloc() {
    if !have("redis-server") || !have("redis-cli") {
        return;
    }
    let port = free_port();
    let logs = Scratch::new("redis-mallctl");
    let mut server = spawn_logged(
        command(
            "redis-server",
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ],
        ),
        &logs,
        Some("dirty_decay_ms:-1"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !try_cli(port, &["PING"]).stdout.contains("PONG") {
        assert!(
            Instant::now() < deadline && server.try_wait().expect("wait").is_none(),
            "redis-server did not come up\n{}",
            common::collect(server.wait().expect("wait"), &logs).describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert!(cli(port, &["DEBUG", "POPULATE", "200000", "key", "256"]).contains("OK"));
    let info = cli(port, &["INFO", "memory"]);
    let used = field(&info, "used_memory");
    let allocated = field(&info, "allocator_allocated");
    assert!(used > 40 << 20, "expected ~50 MB in use:\n{info}");
    assert!(
        allocated.abs_diff(used) * 5 <= used,
        "allocator_allocated {allocated} not within 20 % of used_memory {used}:\n{info}"
    );
    let active = field(&info, "allocator_active");
    let resident = field(&info, "allocator_resident");
    assert!(allocated <= active && active <= resident, "{info}");

    // Under real jemalloc the doctor finds nothing: "Hi Sam, I can't find any memory issue".
    let doctor = cli(port, &["MEMORY", "DOCTOR"]);
    assert!(
        doctor.contains("can't find any memory issue"),
        "MEMORY DOCTOR found a problem:\n{doctor}\n{info}"
    );

    // Free every key, leaving dirty pages. Decay is off (`dirty_decay_ms:-1`), so only a purge
    // through `mallctl("arena.<narenas>.purge")` gives them back: Redis's own after FLUSHALL,
    // or MEMORY PURGE's.
    let before = resident;
    assert!(cli(port, &["FLUSHALL", "SYNC"]).contains("OK"));
    assert!(cli(port, &["MEMORY", "PURGE"]).contains("OK"));
    let after_info = cli(port, &["INFO", "memory"]);
    let after = field(&after_info, "allocator_resident");
    assert!(
        after < before / 4,
        "MEMORY PURGE did not lower allocator_resident ({before} -> {after}):\n{after_info}"
    );

    // MEMORY MALLOC-STATS prints the engine's report through malloc_stats_print's callback.
    let stats = cli(port, &["MEMORY", "MALLOC-STATS"]);
    assert!(stats.contains("sampalloc statistics"), "{stats}");

    let _ = cli(port, &["SHUTDOWN", "NOSAVE"]);
    let status = wait_bounded(
        &mut server,
        Duration::from_secs(30),
        "redis-server shutdown",
    );
    if !status.success() {
        kill_group(&mut server);
    }
}
