//! The walk's own rule table: for each code address met, how to step from its frame to the
//! caller's, in a form applied in a few instructions.
//!
//! Nearly every x86-64 frame steps the same way: the caller's stack pointer (the CFA) is this
//! frame's `rsp` or `rbp` plus a constant, the return address lies just below it, and `rbp` is
//! either untouched or saved at a constant offset from the CFA. framehop caches rules of that
//! kind too, but per thread, and its lookup and dispatch cost about a hundred instructions a
//! frame, which on a shallow stack made the walk half the price of a sample. This table is the
//! process's: a thread's first walk finds the rules other threads learnt (a program that starts
//! many threads paid framehop's evaluation of every frame's CFI again in each), and a thread
//! that only meets known code never builds framehop's cache at all. It is two-way
//! set-associative, keyed by the lookup address, whether it is the first frame (whose rules
//! differ) and the module snapshot's generation (a rule of another snapshot never matches).
//!
//! framehop stays the authority. A rule is learnt by letting framehop step the frame twice over
//! synthetic registers and a synthetic stack whose every word holds its own address, tagged:
//! where the new `rsp` lands tells the CFA's base and offset, and the value of the new `rbp`
//! tells the slot it came from. The two probes use different distances between `rsp` and
//! `rbp`, so a rule that depends on anything else (an expression, another register, a value
//! read from the stack) gives two different answers and is marked slow: such frames are
//! stepped by framehop every time, as before.
//!
//! Sharing without locks: a writer claims a slot by swapping its key for [`BUSY`], writes the
//! rule, then publishes the key; a reader takes the rule only if it read the same key before
//! and after it. The rule also carries eight bits of a hash of its key, so that a slot rewritten
//! in between with the same key (and a rule read from yet another writer) is still caught but
//! for one chance in 256; even then a wrong rule only yields wrong frames, since every stack
//! read is bounded by the walk.

use super::modules::{LeanCfi, Snapshot};
use super::stack::{self, UnwindTls};
use super::FrameRegs;
use core::sync::atomic::{AtomicU64, Ordering};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, Unwinder};

/// Slots of the process's table (16 bytes each, in pairs): 64 KiB of zeroed static memory,
/// touched as it fills.
const SLOTS: usize = 4096;

/// The tag that synthetic stack words carry (high bits no user address has).
const TAG: u64 = 0x5a00_0000_0000_0000;

/// Farthest a probe looks from the synthetic `rsp` or `rbp` (framehop's offsets are at most
/// 16 bits of 8-byte words: 512 KiB); offsets as far as this fit the packed rule.
const REACH: u64 = (512 << 10) - 8;

/// The two probes: a synthetic `rsp`, and `rbp` at a different distance above it in each.
const PROBES: [(u64, u64); 2] = [
    (1 << 40, (1 << 40) + (1 << 21)),
    (2 << 40, (2 << 40) + (3 << 21)),
];

/// A packed rule (see [`Rule::pack`]); 0 is an empty slot.
type Packed = u64;

/// How a frame steps to its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// The walk ends here (the outermost frame).
    End,
    /// framehop steps this frame itself every time.
    Slow,
    /// CFA = (`rbp` if `from_bp`, else `rsp`) + `offset`; the return address at CFA - 8; `rbp`
    /// kept or, with `bp_at`, loaded from CFA + `bp_at`.
    Step {
        from_bp: bool,
        offset: u32,
        bp_at: Option<i32>,
    },
}

// A packed entry: the rule's kind in bits 0-2, `HAS_BP` and `VALIDATE` flags, the module's
// index in bits 8-15 (`NO_MODULE`: none, or past 254), the CFA offset in bits 16-35, the
// signed slot of `rbp` in bits 36-55, and eight bits of the key's hash in bits 56-63.
const KIND_END: u64 = 1;
const KIND_SLOW: u64 = 2;
const KIND_SP: u64 = 3;
const KIND_BP: u64 = 4;
const HAS_BP: u64 = 1 << 3;
const VALIDATE: u64 = 1 << 4;
const NO_MODULE: u64 = 0xff;
const CHECK_SHIFT: u32 = 56;

impl Rule {
    fn pack(self) -> Packed {
        match self {
            Rule::End => KIND_END,
            Rule::Slow => KIND_SLOW,
            Rule::Step {
                from_bp,
                offset,
                bp_at,
            } => {
                let kind = if from_bp { KIND_BP } else { KIND_SP };
                let bp = bp_at.map_or(0, |o| HAS_BP | ((o as i64 as u64) & 0xf_ffff) << 36);
                kind | bp | u64::from(offset) << 16
            }
        }
    }

    #[inline(always)]
    fn unpack(p: Packed) -> Rule {
        match p & 7 {
            KIND_END => Rule::End,
            KIND_SP | KIND_BP => Rule::Step {
                from_bp: p & 7 == KIND_BP,
                offset: (p >> 16) as u32 & 0xf_ffff,
                bp_at: (p & HAS_BP != 0).then_some(((p << 8) as i64 >> 44) as i32),
            },
            _ => Rule::Slow,
        }
    }
}

/// What the table knows of a code address: its rule, and the module it lies in.
#[derive(Clone, Copy)]
pub(super) struct Found(Packed);

impl Found {
    /// The index of the module in the snapshot, `None` when outside every module; `Err` when
    /// not kept (an index past 254): the caller looks it up.
    #[inline(always)]
    pub(super) fn module(self) -> Result<Option<usize>, ()> {
        match (self.0 >> 8) & 0xff {
            NO_MODULE if self.0 & VALIDATE != 0 => Err(()),
            NO_MODULE => Ok(None),
            i => Ok(Some(i as usize)),
        }
    }

    /// Whether the module must be checked with `_dl_find_object` (once a walk).
    #[inline(always)]
    pub(super) fn validate(self) -> bool {
        self.0 & VALIDATE != 0
    }

    /// How stepping this frame uses `rbp`: whether it reads the register's value (a
    /// frame-pointer rule, or a frame framehop steps), and whether it loads the caller's from
    /// the stack.
    #[inline(always)]
    pub(super) fn bp_use(self) -> (bool, bool) {
        match Rule::unpack(self.0) {
            Rule::End => (false, false),
            Rule::Slow => (true, false),
            Rule::Step { from_bp, bp_at, .. } => (from_bp, bp_at.is_some()),
        }
    }
}

/// One slot: its key (0: empty; [`BUSY`]: being written) and its packed rule.
struct Slot {
    key: AtomicU64,
    packed: AtomicU64,
}

/// A key no address has (bit 48 is never set in a key, see [`key_of`]).
const BUSY: u64 = u64::MAX;

static TABLE: [Slot; SLOTS] = [const {
    Slot {
        key: AtomicU64::new(0),
        packed: AtomicU64::new(0),
    }
}; SLOTS];

/// The key of the frame at `f` (a user address, below 2^47) in snapshot `generation`: the
/// address, whether it is the first frame, and the generation's low 15 bits in bits 49-63.
#[inline(always)]
fn key_of(f: FrameAddress, generation: u64) -> u64 {
    (generation & 0x7fff) << 49 | f.address_for_lookup() << 1 | u64::from(!f.is_return_address())
}

/// Eight bits of a hash of `key`, kept in its rule.
#[inline(always)]
fn check(key: u64) -> u64 {
    key.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 56
}

/// The first slot of `key`'s pair. Two-way: a key may sit in either slot of its pair, so that
/// two hot addresses that hash alike (which depends on where the loader put the code) do not
/// evict each other.
#[inline(always)]
fn pair(key: u64) -> usize {
    ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52) as usize % SLOTS) & !1
}

/// What is kept for `key`, if anything.
#[inline(always)]
fn get(key: u64) -> Option<Found> {
    let i = pair(key);
    TABLE[i..i + 2].iter().find_map(|s| {
        if s.key.load(Ordering::Acquire) != key {
            return None;
        }
        let p = s.packed.load(Ordering::Acquire);
        (s.key.load(Ordering::Relaxed) == key && p != 0 && p >> CHECK_SHIFT == check(key))
            .then_some(Found(p & ((1 << CHECK_SHIFT) - 1)))
    })
}

/// Keeps `found` for `key`: in an empty slot of its pair, else in one of the two chosen by the
/// key. Gives up if another thread is writing that slot.
fn put(key: u64, found: Found) {
    let i = pair(key);
    let j = (i..i + 2)
        .find(|&j| TABLE[j].key.load(Ordering::Relaxed) == 0)
        .unwrap_or(i + ((key >> 7) & 1) as usize);
    let s = &TABLE[j];
    let old = s.key.load(Ordering::Relaxed);
    if old == BUSY
        || s.key
            .compare_exchange(old, BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    s.packed
        .store(found.0 | check(key) << CHECK_SHIFT, Ordering::Release);
    s.key.store(key, Ordering::Release);
}

/// What is needed to learn a rule or to step a slow frame: the snapshot, and the thread's
/// framehop cache, built on first need.
pub(super) struct Learn<'a> {
    pub snap: &'a Snapshot,
    pub st: &'a mut UnwindTls,
    /// Whether the stack has room to build the cache (see `stack::MIN_FREE_STACK_FOR_SETUP`).
    pub roomy: &'a mut stack::Roomy,
}

impl Learn<'_> {
    /// The thread's framehop cache; `None` if it cannot be built now.
    fn framehop(&mut self) -> Option<&mut CacheX86_64<LeanCfi>> {
        let roomy = !self.st.cache.is_null() || self.roomy.get(self.st);
        let cache = stack::cache_or_create(self.st, roomy);
        // SAFETY: the cache belongs to this thread and is used only while its walk runs (the
        // thread's `busy` flag is set), one reference at a time.
        unsafe { cache.as_mut() }
    }
}

/// The rule and module of the frame at `f`, the `depth`th of its walk: from the thread's memo
/// of its last walk, from the table, or learnt and kept; `None` when it is not known and
/// cannot be learnt now (no room to build framehop's cache).
#[inline(always)]
pub(super) fn find(learn: &mut Learn<'_>, f: FrameAddress, depth: usize) -> Option<Found> {
    if f.address_for_lookup() >= 1 << 47 {
        // Not a user address (the legacy vsyscall page): no key for it, so not kept.
        return learnt(learn, f);
    }
    let key = key_of(f, learn.snap.generation);
    if let Some(&(k, packed)) = learn.st.memo.get(depth) {
        if k == key {
            return Some(Found(packed));
        }
    }
    let found = match get(key) {
        Some(found) => found,
        None => {
            let found = learnt(learn, f)?;
            put(key, found);
            found
        }
    };
    if let Some(m) = learn.st.memo.get_mut(depth) {
        *m = (key, found.0);
    }
    Some(found)
}

/// What a step gives: the caller's return address, the end of the walk, or no answer now (a
/// slow frame and no framehop cache).
pub(super) enum Step {
    Caller(u64),
    End,
    Unknown,
}

/// Set in the address [`step`] hands `read` for a saved `rbp` (stack slots are 8-byte aligned,
/// so bit 0 is free): the reader clears it, and a walk's log can tell such a read apart, since
/// its value matters only if a later rule uses `rbp` (see `thread::trace_memo`).
pub(super) const SAVED_BP: u64 = 1;

/// Steps `regs` (of the frame at `f`, whose rule is `found`) to its caller's, like framehop's
/// `unwind_frame`, reading the stack with `read`. Plain registers rather than framehop's
/// register set, which is built only for the frames framehop steps itself.
#[inline(always)]
pub(super) fn step<F>(
    found: Found,
    learn: &mut Learn<'_>,
    f: FrameAddress,
    regs: &mut FrameRegs,
    read: &mut F,
) -> Step
where
    F: FnMut(u64) -> Result<u64, ()>,
{
    let ra = match Rule::unpack(found.0) {
        Rule::End => None,
        Rule::Slow => {
            let snap = learn.snap;
            let Some(cache) = learn.framehop() else {
                return Step::Unknown;
            };
            let mut r = UnwindRegsX86_64::new(regs.pc, regs.sp, regs.bp);
            let ra = snap
                .unwinder
                .unwind_frame(f, &mut r, cache, read)
                .ok()
                .flatten();
            (regs.sp, regs.bp) = (r.sp(), r.bp());
            if let Some(ra) = ra {
                regs.pc = ra;
            }
            ra
        }
        Rule::Step {
            from_bp,
            offset,
            bp_at,
        } => apply(from_bp, offset, bp_at, regs, read),
    };
    ra.map_or(Step::End, Step::Caller)
}

/// A fast rule applied to `regs`: the caller's return address, or `None` (the walk ends).
#[inline(always)]
fn apply<F>(
    from_bp: bool,
    offset: u32,
    bp_at: Option<i32>,
    regs: &mut FrameRegs,
    read: &mut F,
) -> Option<u64>
where
    F: FnMut(u64) -> Result<u64, ()>,
{
    let (sp, bp) = (regs.sp, regs.bp);
    // framehop's frame-pointer rule: a zero `rbp` ends the stack.
    if from_bp && bp == 0 {
        return None;
    }
    let cfa = if from_bp { bp } else { sp }.checked_add(u64::from(offset))?;
    if cfa <= sp {
        return None;
    }
    let ra = read(cfa - 8).ok()?;
    let new_bp = match bp_at {
        Some(at) => read(cfa.checked_add_signed(i64::from(at))? | SAVED_BP).ok()?,
        None => bp,
    };
    if ra == 0 {
        return None;
    }
    *regs = FrameRegs {
        pc: ra,
        sp: cfa,
        bp: new_bp,
    };
    Some(ra)
}

/// The rule framehop applies to the frame at `f`, from two probes that must agree, and the
/// module `f` lies in; `None` without a framehop cache.
#[cold]
#[inline(never)]
fn learnt(learn: &mut Learn<'_>, f: FrameAddress) -> Option<Found> {
    let snap = learn.snap;
    let cache = learn.framehop()?;
    let [a, b] = PROBES.map(|(sp, bp)| probe(snap, cache, f, sp, bp));
    let rule = if a == b { a } else { Rule::Slow };
    let module = match snap.find(f.address_for_lookup()) {
        Some(i) if (i as u64) < NO_MODULE => {
            let validate = if snap.mods[i].validate { VALIDATE } else { 0 };
            (i as u64) << 8 | validate
        }
        Some(_) => NO_MODULE << 8 | VALIDATE,
        None => NO_MODULE << 8,
    };
    Some(Found(rule.pack() | module))
}

/// Lets framehop step the frame at `f` from `rsp = sp`, `rbp = bp` over a stack whose words
/// hold their own addresses, tagged, and reads the rule off the result.
fn probe(
    snap: &Snapshot,
    cache: &mut CacheX86_64<LeanCfi>,
    f: FrameAddress,
    sp: u64,
    bp: u64,
) -> Rule {
    let near = |a: u64, base: u64| a.wrapping_sub(base).wrapping_add(REACH) <= 2 * REACH;
    let mut read = |a: u64| {
        if near(a, sp) || near(a, bp) {
            Ok(a | TAG)
        } else {
            Err(())
        }
    };
    let mut regs = UnwindRegsX86_64::new(f.address(), sp, bp);
    let ra = match snap.unwinder.unwind_frame(f, &mut regs, cache, &mut read) {
        Ok(None) => return Rule::End,
        Ok(Some(ra)) => ra,
        Err(_) => return Rule::Slow,
    };
    let cfa = regs.sp();
    let above = |base: u64| cfa > base && cfa - base <= REACH;
    let (from_bp, offset) = if above(sp) {
        (false, cfa - sp)
    } else if above(bp) {
        (true, cfa - bp)
    } else {
        return Rule::Slow;
    };
    if ra != (cfa - 8) | TAG {
        return Rule::Slow;
    }
    let new_bp = regs.bp();
    let bp_at = if new_bp == bp {
        None
    } else if new_bp & TAG == TAG && near(new_bp & !TAG, cfa) {
        Some((new_bp & !TAG).wrapping_sub(cfa) as i64 as i32)
    } else {
        return Rule::Slow;
    };
    Rule::Step {
        from_bp,
        offset: offset as u32,
        bp_at,
    }
}

#[cfg(test)]
mod tests {
    use super::{get, pair, put, Found, Rule, CHECK_SHIFT, NO_MODULE, REACH, SLOTS, VALIDATE};

    #[test]
    fn rules_pack_and_unpack() {
        let reach = REACH as i32;
        for r in [
            Rule::End,
            Rule::Slow,
            Rule::Step {
                from_bp: false,
                offset: 8,
                bp_at: None,
            },
            Rule::Step {
                from_bp: true,
                offset: 16,
                bp_at: Some(-16),
            },
            Rule::Step {
                from_bp: false,
                offset: REACH as u32,
                bp_at: Some(-reach),
            },
            Rule::Step {
                from_bp: true,
                offset: REACH as u32,
                bp_at: Some(reach),
            },
        ] {
            assert_ne!(r.pack(), 0);
            assert_eq!(Rule::unpack(r.pack()), r);
            assert!(
                r.pack() >> CHECK_SHIFT == 0,
                "{r:?} overlaps the check bits"
            );
            for module in [0, 7 << 8 | VALIDATE, NO_MODULE << 8] {
                assert_eq!(Rule::unpack(r.pack() | module), r);
            }
        }
    }

    #[test]
    fn found_says_module_and_validation() {
        let rule = Rule::Step {
            from_bp: true,
            offset: 16,
            bp_at: Some(-16),
        }
        .pack();
        let f = Found(rule | 3 << 8 | VALIDATE);
        assert_eq!(f.module(), Ok(Some(3)));
        assert!(f.validate());
        let f = Found(rule | 3 << 8);
        assert_eq!(f.module(), Ok(Some(3)));
        assert!(!f.validate());
        assert_eq!(Found(rule | NO_MODULE << 8).module(), Ok(None));
        assert_eq!(Found(rule | NO_MODULE << 8 | VALIDATE).module(), Err(()));
    }

    #[test]
    fn two_keys_of_one_pair_are_both_kept() {
        // Keys of generation 0x7ffe, which no test snapshot reaches.
        let key = 0x7ffe << 49 | 0x7f00_1234_5678u64 << 1;
        let same: Vec<u64> = (1..10_000_000u64)
            .map(|k| key + 2 * k)
            .filter(|&k| pair(k) == pair(key))
            .take(2)
            .collect();
        let (a, b) = (Found(Rule::End.pack()), Found(Rule::Slow.pack() | 5 << 8));
        put(key, a);
        put(same[0], b);
        assert_eq!(get(key).map(|f| f.0), Some(a.0));
        assert_eq!(get(same[0]).map(|f| f.0), Some(b.0));
        // A third replaces one of the two.
        put(same[1], a);
        assert_eq!(get(same[1]).map(|f| f.0), Some(a.0));
        assert!(get(key).is_some() != get(same[0]).is_some());
        // Another generation: nothing matches.
        assert!(get(key ^ 1 << 49).is_none());
        assert!(pair(key) + 1 < SLOTS);
    }
}
