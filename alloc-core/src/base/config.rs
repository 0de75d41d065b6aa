//! Configuration: the `SAMPALLOC_CONF` options, in jemalloc's `MALLOC_CONF` style
//! (`key:value,key:value`), parsed without allocating.
//!
//! Options live in atomics so they can be read on any path and changed at run time (from Rust
//! through `sampalloc::configure`). A bad entry prints one warning line and keeps the default.
//! The environment is ignored in setuid/setgid processes (`AT_SECURE`).

use crate::platform::lock::Locked;
use crate::platform::os::{self, HugeAdvice, Line, ThpMode};
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// Default `dirty_decay_ms`: long enough that a block freed and allocated again within a
/// second or so reuses resident pages; short enough that RSS follows live memory.
pub const DEFAULT_DECAY_MS: i64 = 1000;
/// Default `lg_prof_sample`: a sample every 512 KiB on average, as jemalloc.
pub const DEFAULT_LG_PROF_SAMPLE: u32 = 19;
/// Longest `prof_prefix` accepted.
pub const PREFIX_MAX: usize = 240;

#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static NARENAS: AtomicUsize = AtomicUsize::new(0);
static DIRTY_DECAY_MS: AtomicI64 = AtomicI64::new(DEFAULT_DECAY_MS);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static STATS_PRINT: AtomicBool = AtomicBool::new(false);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF: AtomicBool = AtomicBool::new(false);
static PROF_ACTIVE: AtomicBool = AtomicBool::new(true);
static LG_PROF_SAMPLE: AtomicU32 = AtomicU32::new(DEFAULT_LG_PROF_SAMPLE);
static LG_PROF_INTERVAL: AtomicI32 = AtomicI32::new(-1);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_INTERVAL_MS: AtomicU64 = AtomicU64::new(0);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_GDUMP: AtomicBool = AtomicBool::new(false);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_FINAL: AtomicBool = AtomicBool::new(false);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_LEAK: AtomicBool = AtomicBool::new(false);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_SIGNAL: AtomicI32 = AtomicI32::new(0);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static PROF_PEEK: AtomicUsize = AtomicUsize::new(0);
#[link_section = ".data.sampalloc_hot"] // see `platform::os`, hot statics
static THP: AtomicU8 = AtomicU8::new(Thp::Auto as u8);
/// Bumped when an option that decides sampling changes (see [`sampling_generation`]).
static SAMPLING_GENERATION: AtomicU32 = AtomicU32::new(1);

/// Changes whenever `prof`, `prof_active` or `lg_prof_sample` is set, so threads know to draw
/// their next sample point again.
pub fn sampling_generation() -> u32 {
    SAMPLING_GENERATION.load(Ordering::Relaxed)
}

/// `prof_prefix` as set; empty until set, which reads as [`DEFAULT_PREFIX`]. All zeroes, it
/// lives in `.bss`: the default's bytes would put 256 bytes of `.data` on the page that arena
/// 0's first part shares (see `pool::arena::Arena`).
struct Prefix {
    bytes: [u8; PREFIX_MAX],
    len: usize,
}
static PROF_PREFIX: Locked<Prefix> = Locked::new(Prefix {
    bytes: [0; PREFIX_MAX],
    len: 0,
});

/// `prof_prefix` until set.
const DEFAULT_PREFIX: &[u8] = b"sampalloc";
/// `narenas` (0: the default, see [`narenas_or_default`]).
pub fn narenas() -> usize {
    NARENAS.load(Ordering::Relaxed)
}
/// The number of shared arenas (see `pool::arena::ThreadArenas`): `narenas` if set, else
/// the default, one per two CPUs (rounded up). The classes smaller than a cache line have
/// arenas of their own, one per CPU (or `narenas`, if more), so fewer shared arenas keep
/// `free`'s guard against passive false sharing.
///
/// Each arena keeps its own partly used slabs and free pages, which other arenas' slabs cannot
/// use, so fewer arenas hold less memory: with 16 threads a round on 2 CPUs, 8 arenas
/// (jemalloc's 4 × CPUs) held 281 MiB at the peak against 215–232 MiB for 2 and 187 MiB for
/// one (`benches/RESULTS.md`, tenth and fifteenth sessions); mimalloc-bench's threaded
/// programs peaked 10 % lower, at the same speed. No more threads than CPUs run at once and
/// the thread caches take most of the traffic, so two CPUs to an arena leave its locks
/// mostly free.
pub fn narenas_or_default() -> usize {
    match narenas() {
        0 => os::cpu_count().div_ceil(2),
        n => n,
    }
}
/// `dirty_decay_ms` (negative: never purge; 0: purge at once).
#[inline]
pub fn decay_ms() -> i64 {
    DIRTY_DECAY_MS.load(Ordering::Relaxed)
}
/// `stats_print`.
pub fn stats_print() -> bool {
    STATS_PRINT.load(Ordering::Relaxed)
}
/// `prof`.
pub fn prof() -> bool {
    PROF.load(Ordering::Relaxed)
}
/// `prof_active`.
pub fn prof_active() -> bool {
    PROF_ACTIVE.load(Ordering::Relaxed)
}
/// `lg_prof_sample`.
pub fn lg_prof_sample() -> u32 {
    LG_PROF_SAMPLE.load(Ordering::Relaxed)
}
/// `lg_prof_interval` (-1: off).
pub fn lg_prof_interval() -> i32 {
    LG_PROF_INTERVAL.load(Ordering::Relaxed)
}
/// `prof_interval_ms`: a dump at the first tick after every so many milliseconds (0: off).
pub fn prof_interval_ms() -> u64 {
    PROF_INTERVAL_MS.load(Ordering::Relaxed)
}
/// Longest `prof_interval_ms` accepted: a day.
pub const PROF_INTERVAL_MS_MAX: u64 = 86_400_000;
/// `prof_gdump`.
pub fn prof_gdump() -> bool {
    PROF_GDUMP.load(Ordering::Relaxed)
}
/// `prof_final`.
pub fn prof_final() -> bool {
    PROF_FINAL.load(Ordering::Relaxed)
}
/// `prof_leak`.
pub fn prof_leak() -> bool {
    PROF_LEAK.load(Ordering::Relaxed)
}
/// `prof_peek`: how many leading bytes of each live sampled block a dump keeps in the
/// profile's `.peek` side file (0: off, no side file).
pub fn prof_peek() -> usize {
    PROF_PEEK.load(Ordering::Relaxed)
}
/// Largest `prof_peek` accepted.
pub const PROF_PEEK_MAX: usize = 256;
/// `prof_signal` (0: none).
pub fn prof_signal() -> i32 {
    PROF_SIGNAL.load(Ordering::Relaxed)
}
/// The `thp` option: whether the engine asks the kernel for transparent huge pages.
///
/// Huge blocks (over 2 MiB, one mapping each, used whole by the program that asked for them) are
/// dense memory: the default asks for them, where asking cannot stall the program. In the
/// kernel's `madvise` mode with a defrag setting that compacts on the spot for advised
/// mappings (`madvise`, the usual one, `defer+madvise` or `always`), a first touch finding no
/// free huge page waits for reclaim and compaction: a loop over 5-25 MiB buffers took 0.10 s
/// or 1.4-1.5 s from run to run on a VM whose memory had been used (0.23 s in small pages,
/// tcmalloc's 0.21 s); there the default asks for nothing. Segments ask only with `always`:
/// then every huge page of a segment does, and the page heap keeps them whole (its decay
/// returns a huge page when all of it is free and breaks a well used one only after a longer
/// delay; see `span::page_heap`). Measured (issue 19) with segments' huge pages on by default
/// (an arena's segments after its first): 5–100× fewer page faults (thread rounds 89k -> 18k,
/// rss1g 289k -> 2.8k), but the busy JVM's RSS 765–769 -> 796–799 MiB, +4 %, the whole 2 MiB
/// of a huge page being resident where the program touches part of it, and on this VM slower
/// first touches (a fresh huge page costs more to fault than 512 small ones: rss1g 0.66 s ->
/// 2.15 s). Lean by default is the promise; `always` is there for heaps that are dense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Thp {
    /// The default: `MADV_HUGEPAGE` for huge blocks in the kernel's `madvise` mode when its
    /// defrag setting is `defer` or `never`; otherwise, and for segments, no advice (the
    /// kernel's mode decides; in `always` mode it gives huge pages unasked).
    Auto = 0,
    /// Never ask; in the kernel's `always` mode say `MADV_NOHUGEPAGE`, so that nothing of ours
    /// is backed by huge pages.
    Never = 1,
    /// Ask for huge blocks and for every huge page of every segment, whenever the kernel
    /// could give them.
    Always = 2,
}

/// `thp`.
pub fn thp() -> Thp {
    match THP.load(Ordering::Relaxed) {
        1 => Thp::Never,
        2 => Thp::Always,
        _ => Thp::Auto,
    }
}

/// `thp` as it is written.
pub fn thp_name() -> &'static str {
    match thp() {
        Thp::Auto => "auto",
        Thp::Never => "never",
        Thp::Always => "always",
    }
}

/// What memory the advice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dense {
    /// A 4 MiB segment, carved into slabs and large blocks.
    Segment,
    /// A huge block's own mapping.
    HugeBlock,
}

/// What to tell the kernel about a new segment or huge block, given `thp` and the kernel's
/// mode: ask where `thp` says so and the kernel could give huge pages; refuse them (`never`)
/// only where the kernel would otherwise give them unasked.
pub fn huge_advice(what: Dense) -> HugeAdvice {
    huge_advice_for(thp(), os::thp_mode(), os::thp_advice_may_stall(), what)
}

/// [`huge_advice`] for `thp`, the kernel's `mode`, and whether advice may stall a fault
/// (`stalls`, see `os::thp_advice_may_stall`).
fn huge_advice_for(thp: Thp, mode: ThpMode, stalls: bool, what: Dense) -> HugeAdvice {
    match (thp, mode, what) {
        (_, ThpMode::Never, _) => HugeAdvice::None,
        (Thp::Never, ThpMode::Always, _) => HugeAdvice::NoHuge,
        (Thp::Never, ThpMode::Madvise, _) => HugeAdvice::None,
        (Thp::Auto, _, Dense::Segment) | (Thp::Auto, ThpMode::Always, _) => HugeAdvice::None,
        (Thp::Auto, ThpMode::Madvise, Dense::HugeBlock) if stalls => HugeAdvice::None,
        (Thp::Auto, ThpMode::Madvise, Dense::HugeBlock) | (Thp::Always, _, _) => HugeAdvice::Huge,
    }
}

/// Copies `prof_prefix` into `out`; returns its length.
pub fn prof_prefix(out: &mut [u8; PREFIX_MAX]) -> usize {
    let p = PROF_PREFIX.lock();
    let prefix = if p.len == 0 {
        DEFAULT_PREFIX
    } else {
        &p.bytes[..p.len]
    };
    out[..prefix.len()].copy_from_slice(prefix);
    prefix.len()
}

/// Why an option was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfError {
    /// The key is not an option.
    UnknownKey,
    /// The value does not fit the option.
    BadValue,
    /// The entry has no `:`.
    Malformed,
}

impl ConfError {
    /// Why the entry was refused, in words: `unknown option`, `invalid value`, `expected
    /// key:value`.
    pub fn message(self) -> &'static str {
        match self {
            ConfError::UnknownKey => "unknown option",
            ConfError::BadValue => "invalid value",
            ConfError::Malformed => "expected key:value",
        }
    }
}

/// Applies a `key:value,...` string. Each bad entry is reported through `warn(entry, error)`
/// and skipped; the others take effect. Returns the number of bad entries.
pub fn apply(conf: &[u8], mut warn: impl FnMut(&[u8], ConfError)) -> usize {
    let mut bad = 0;
    for entry in conf.split(|&b| b == b',') {
        let entry = trim(entry);
        if entry.is_empty() {
            continue;
        }
        let result = match entry.iter().position(|&b| b == b':') {
            None => Err(ConfError::Malformed),
            Some(i) => set(trim(&entry[..i]), trim(&entry[i + 1..])),
        };
        if let Err(e) = result {
            warn(entry, e);
            bad += 1;
        }
    }
    bad
}

/// Sets one option.
pub fn set(key: &[u8], value: &[u8]) -> Result<(), ConfError> {
    match key {
        b"narenas" => {
            let n = parse_u64(value).filter(|&n| (1..=4096).contains(&n));
            NARENAS.store(n.ok_or(ConfError::BadValue)? as usize, Ordering::Relaxed);
        }
        b"dirty_decay_ms" => {
            let v = parse_i64(value).filter(|&v| v >= -1);
            DIRTY_DECAY_MS.store(v.ok_or(ConfError::BadValue)?, Ordering::Relaxed);
        }
        b"stats_print" => STATS_PRINT.store(parse_bool(value)?, Ordering::Relaxed),
        b"prof" => PROF.store(parse_bool(value)?, Ordering::Relaxed),
        b"prof_active" => PROF_ACTIVE.store(parse_bool(value)?, Ordering::Relaxed),
        b"lg_prof_sample" => {
            let v = parse_u64(value).filter(|&v| v <= 40);
            LG_PROF_SAMPLE.store(v.ok_or(ConfError::BadValue)? as u32, Ordering::Relaxed);
        }
        b"lg_prof_interval" => {
            let v = parse_i64(value).filter(|&v| (-1..=62).contains(&v));
            LG_PROF_INTERVAL.store(v.ok_or(ConfError::BadValue)? as i32, Ordering::Relaxed);
        }
        b"prof_interval_ms" => {
            let v = parse_u64(value).filter(|&v| v <= PROF_INTERVAL_MS_MAX);
            PROF_INTERVAL_MS.store(v.ok_or(ConfError::BadValue)?, Ordering::Relaxed);
        }
        b"prof_gdump" => PROF_GDUMP.store(parse_bool(value)?, Ordering::Relaxed),
        b"prof_final" => PROF_FINAL.store(parse_bool(value)?, Ordering::Relaxed),
        b"prof_leak" => PROF_LEAK.store(parse_bool(value)?, Ordering::Relaxed),
        b"prof_peek" => {
            let v = parse_u64(value).filter(|&v| v <= PROF_PEEK_MAX as u64);
            PROF_PEEK.store(v.ok_or(ConfError::BadValue)? as usize, Ordering::Relaxed);
        }
        b"prof_prefix" => {
            if value.is_empty() || value.len() > PREFIX_MAX || value.contains(&0) {
                return Err(ConfError::BadValue);
            }
            let mut p = PROF_PREFIX.lock();
            p.bytes[..value.len()].copy_from_slice(value);
            p.len = value.len();
        }
        b"prof_signal" => PROF_SIGNAL.store(
            parse_signal(value).ok_or(ConfError::BadValue)?,
            Ordering::Relaxed,
        ),
        b"thp" => {
            let v = match value {
                b"auto" => Thp::Auto,
                b"never" => Thp::Never,
                b"always" => Thp::Always,
                _ => return Err(ConfError::BadValue),
            };
            THP.store(v as u8, Ordering::Relaxed);
        }
        _ => return Err(ConfError::UnknownKey),
    }
    if matches!(key, b"prof" | b"prof_active" | b"lg_prof_sample") {
        SAMPLING_GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads `SAMPALLOC_CONF` from the environment (unless the process is setuid/setgid), warning
/// on stderr about bad entries. Does not allocate.
pub fn load_from_env() {
    // SAFETY: getauxval and getenv read process state set up before main; neither allocates.
    let conf = unsafe {
        if libc::getauxval(libc::AT_SECURE) != 0 {
            return;
        }
        libc::getenv(c"SAMPALLOC_CONF".as_ptr())
    };
    if conf.is_null() {
        return;
    }
    // SAFETY: getenv returns a NUL-terminated string that lives as long as the environment.
    let bytes = unsafe { core::ffi::CStr::from_ptr(conf) }.to_bytes();
    apply(bytes, warn_stderr);
}

/// Prints the one-line warning for a bad entry.
pub fn warn_stderr(entry: &[u8], e: ConfError) {
    let joiner = match e {
        ConfError::UnknownKey => "",
        ConfError::BadValue => " in",
        ConfError::Malformed => ", got",
    };
    Line::new()
        .str("sampalloc: SAMPALLOC_CONF: ")
        .str(e.message())
        .str(joiner)
        .str(" '")
        .bytes(entry)
        .str("'; keeping the default")
        .emit();
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

fn parse_i64(s: &[u8]) -> Option<i64> {
    match s.first() {
        Some(b'-') => parse_u64(&s[1..]).map(|v| -(v as i64)),
        _ => parse_u64(s).map(|v| v as i64),
    }
}

fn parse_bool(s: &[u8]) -> Result<bool, ConfError> {
    match s {
        b"true" | b"1" => Ok(true),
        b"false" | b"0" => Ok(false),
        _ => Err(ConfError::BadValue),
    }
}

fn parse_signal(s: &[u8]) -> Option<i32> {
    let name = s.strip_prefix(b"SIG").unwrap_or(s);
    let n = match name {
        b"USR1" => libc::SIGUSR1,
        b"USR2" => libc::SIGUSR2,
        b"HUP" => libc::SIGHUP,
        b"PROF" => libc::SIGPROF,
        b"URG" => libc::SIGURG,
        b"WINCH" => libc::SIGWINCH,
        b"none" | b"NONE" | b"0" => 0,
        _ => {
            let v = parse_u64(s)? as i32;
            if v >= 1 && v <= libc::SIGRTMAX() {
                v
            } else {
                return None;
            }
        }
    };
    Some(n)
}

/// Held by every test that changes process-wide options or depends on their defaults (tests
/// run side by side, and one test's `lg_prof_sample` was another's): see [`hold_options`].
#[cfg(test)]
static TEST_OPTIONS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`TEST_OPTIONS`], also after a test that held it panicked.
#[cfg(test)]
pub fn hold_options() -> std::sync::MutexGuard<'static, ()> {
    TEST_OPTIONS.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Options are process-wide; tests restore what they change, holding `hold_options()`.

    #[test]
    fn parses_and_reports_bad_entries() {
        let _options = hold_options();
        let mut warnings = Vec::new();
        let bad = apply(
            b" lg_prof_sample:17 , prof:true,bogus:1,narenas:x,novalue,prof_signal:SIGUSR2,prof_prefix:/tmp/app",
            |e, err| warnings.push((e.to_vec(), err)),
        );
        assert_eq!(bad, 3);
        assert_eq!(
            warnings,
            vec![
                (b"bogus:1".to_vec(), ConfError::UnknownKey),
                (b"narenas:x".to_vec(), ConfError::BadValue),
                (b"novalue".to_vec(), ConfError::Malformed),
            ]
        );
        assert_eq!(lg_prof_sample(), 17);
        assert!(prof());
        assert_eq!(prof_signal(), libc::SIGUSR2);
        let mut buf = [0u8; PREFIX_MAX];
        let n = prof_prefix(&mut buf);
        assert_eq!(&buf[..n], b"/tmp/app");
        assert_eq!(narenas(), 0, "a bad value keeps the default");
        apply(
            b"lg_prof_sample:19,prof:false,prof_signal:none,prof_prefix:sampalloc",
            |_, _| panic!(),
        );
    }

    #[test]
    fn value_ranges() {
        let _options = hold_options();
        assert_eq!(set(b"dirty_decay_ms", b"-2"), Err(ConfError::BadValue));
        assert_eq!(set(b"lg_prof_sample", b"99"), Err(ConfError::BadValue));
        assert_eq!(set(b"prof_final", b"yes"), Err(ConfError::BadValue));
        assert_eq!(set(b"prof_signal", b"12"), Ok(()));
        assert_eq!(prof_signal(), 12);
        assert_eq!(set(b"prof_signal", b"0"), Ok(()));
        assert_eq!(set(b"prof_interval_ms", b"-5"), Err(ConfError::BadValue));
        assert_eq!(set(b"prof_interval_ms", b"10s"), Err(ConfError::BadValue));
        assert_eq!(
            set(b"prof_interval_ms", b"86400001"),
            Err(ConfError::BadValue)
        );
        assert_eq!(prof_interval_ms(), 0, "a bad value keeps the default");
        assert_eq!(set(b"prof_interval_ms", b"250"), Ok(()));
        assert_eq!(prof_interval_ms(), 250);
        assert_eq!(set(b"prof_interval_ms", b"0"), Ok(()));
        assert_eq!(prof_interval_ms(), 0);
        assert_eq!(prof_peek(), 0, "off by default");
        for bad in [&b"257"[..], b"-1", b"64b", b""] {
            assert_eq!(set(b"prof_peek", bad), Err(ConfError::BadValue));
        }
        assert_eq!(prof_peek(), 0, "a bad value keeps the default");
        // Values that are taken: heap_v2's peek test (which runs dumps with it off and on).
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_u64(b"99999999999999999999"), None);
    }

    #[test]
    fn thp_values_and_the_advice_they_give() {
        let _options = hold_options();
        assert_eq!(thp(), Thp::Auto);
        assert_eq!(set(b"thp", b"sometimes"), Err(ConfError::BadValue));
        assert_eq!(thp(), Thp::Auto, "a bad value keeps the default");
        assert_eq!(set(b"thp", b"never"), Ok(()));
        assert_eq!((thp(), thp_name()), (Thp::Never, "never"));
        assert_eq!(set(b"thp", b"always"), Ok(()));
        assert_eq!(thp(), Thp::Always);
        assert_eq!(set(b"thp", b"auto"), Ok(()));
        assert_eq!(thp(), Thp::Auto);
        use Dense::{HugeBlock as H, Segment as S};
        use HugeAdvice as A;
        use ThpMode as M;
        // (thp, mode, whether advice may stall a fault, what, advice)
        for (t, m, stalls, what, a) in [
            (Thp::Auto, M::Madvise, false, H, A::Huge),
            (Thp::Auto, M::Madvise, true, H, A::None),
            (Thp::Auto, M::Madvise, false, S, A::None),
            (Thp::Auto, M::Always, false, H, A::None),
            (Thp::Auto, M::Always, true, S, A::None),
            (Thp::Auto, M::Never, false, H, A::None),
            (Thp::Always, M::Madvise, true, H, A::Huge),
            (Thp::Always, M::Madvise, false, S, A::Huge),
            (Thp::Always, M::Always, true, S, A::Huge),
            (Thp::Always, M::Never, false, S, A::None),
            (Thp::Never, M::Madvise, false, H, A::None),
            (Thp::Never, M::Always, true, H, A::NoHuge),
            (Thp::Never, M::Always, false, S, A::NoHuge),
            (Thp::Never, M::Never, true, S, A::None),
        ] {
            assert_eq!(
                huge_advice_for(t, m, stalls, what),
                a,
                "{t:?} in mode {m:?} (stalls: {stalls}) for {what:?}"
            );
        }
    }

    #[test]
    fn error_messages_and_the_narenas_default() {
        let _options = hold_options();
        assert_eq!(ConfError::UnknownKey.message(), "unknown option");
        assert_eq!(ConfError::BadValue.message(), "invalid value");
        assert_eq!(ConfError::Malformed.message(), "expected key:value");
        if narenas() == 0 {
            assert_eq!(narenas_or_default(), os::cpu_count().div_ceil(2));
        }
    }
}
