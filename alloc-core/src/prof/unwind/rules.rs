//! The walk's own rule table: for each code address met, how to step from its frame to the
//! caller's, in a form applied in a few instructions.
//!
//! Nearly every x86-64 frame steps the same way: the caller's stack pointer (the CFA) is this
//! frame's `rsp` or `rbp` plus a constant, the return address lies just below it, and `rbp` is
//! either untouched or saved at a constant offset from the CFA. framehop caches rules of that
//! kind too, but its lookup and dispatch cost about a hundred instructions a frame, which on a
//! shallow stack made the walk half the price of a sample. This table is per thread (no
//! locks), two-way set-associative, and keyed by the lookup address (and whether it is the first frame,
//! whose rules differ).
//!
//! framehop stays the authority. A rule is learnt by letting framehop step the frame twice over
//! synthetic registers and a synthetic stack whose every word holds its own address, tagged:
//! where the new `rsp` lands tells the CFA's base and offset, and the value of the new `rbp`
//! tells the slot it came from. The two probes use different distances between `rsp` and
//! `rbp`, so a rule that depends on anything else (an expression, another register, a value
//! read from the stack) gives two different answers and is marked slow: such frames are
//! stepped by framehop every time, as before. The table is cleared whenever the module
//! snapshot changes, as framehop's own cache is.

use super::modules::{LeanCfi, Snapshot};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64};
use framehop::{FrameAddress, Unwinder};

/// Slots in a thread's table (16 bytes each), in pairs.
const SLOTS: usize = 512;

/// The tag that synthetic stack words carry (high bits no user address has).
const TAG: u64 = 0x5a00_0000_0000_0000;

/// Farthest a probe looks from the synthetic `rsp` or `rbp` (framehop's offsets are at most
/// 16 bits of 8-byte words: 512 KiB).
const REACH: u64 = 512 << 10;

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
// index in bits 8-15 (`NO_MODULE`: none, or past 254), the CFA offset in bits 16-39 and the
// signed slot of `rbp` in bits 40-63.
const KIND_END: u64 = 1;
const KIND_SLOW: u64 = 2;
const KIND_SP: u64 = 3;
const KIND_BP: u64 = 4;
const HAS_BP: u64 = 1 << 3;
const VALIDATE: u64 = 1 << 4;
const NO_MODULE: u64 = 0xff;

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
                let bp = bp_at.map_or(0, |o| HAS_BP | (o as i64 as u64) << 40);
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
                offset: (p >> 16) as u32 & 0xff_ffff,
                bp_at: (p & HAS_BP != 0).then_some(((p as i64) >> 40) as i32),
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
}

/// A thread's table: the snapshot generation its rules were learnt in, and the slots.
pub(super) struct Rules {
    generation: u64,
    slots: [(u64, Packed); SLOTS],
}

impl Rules {
    pub(super) const fn new() -> Rules {
        Rules {
            generation: 0,
            slots: [(0, 0); SLOTS],
        }
    }

    /// Forgets every rule learnt in another snapshot than `generation`.
    #[inline(always)]
    pub(super) fn follow(&mut self, generation: u64) {
        if self.generation != generation {
            self.slots = [(0, 0); SLOTS];
            self.generation = generation;
        }
    }

    /// The first slot of `key`'s pair. Two-way: a key may sit in either slot of its pair, so
    /// that two hot addresses that hash alike (which depends on where the loader put the code)
    /// do not evict each other at every walk.
    #[inline(always)]
    fn pair(key: u64) -> usize {
        ((key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) as usize % SLOTS) & !1
    }

    /// What is kept for `key`, if anything.
    #[inline(always)]
    fn get(&self, key: u64) -> Option<Found> {
        let i = Rules::pair(key);
        self.slots[i..i + 2]
            .iter()
            .find(|s| s.0 == key && s.1 != 0)
            .map(|s| Found(s.1))
    }

    /// Keeps `found` for `key` (not kept yet) in the first slot of its pair, moving the pair's
    /// first entry to the second.
    fn put(&mut self, key: u64, found: Found) {
        let i = Rules::pair(key);
        self.slots[i + 1] = self.slots[i];
        self.slots[i] = (key, found.0);
    }
}

/// What is needed to learn a rule: the snapshot and the thread's framehop cache.
pub(super) struct Learn<'a> {
    pub snap: &'a Snapshot,
    pub framehop: &'a mut CacheX86_64<LeanCfi>,
}

/// The rule and module of the frame at `f`, from the table, or learnt and kept.
#[inline(always)]
pub(super) fn find(rules: &mut Rules, learn: &mut Learn<'_>, f: FrameAddress) -> Found {
    let key = f.address_for_lookup() << 1 | u64::from(!f.is_return_address());
    if let Some(found) = rules.get(key) {
        return found;
    }
    let found = learnt(learn, f);
    rules.put(key, found);
    found
}

/// Steps `regs` (of the frame at `f`, whose rule is `found`) to its caller's and returns the
/// caller's return address (`None`: the walk ends), like framehop's `unwind_frame`, reading the
/// stack with `read`.
#[inline(always)]
pub(super) fn step<F>(
    found: Found,
    learn: &mut Learn<'_>,
    f: FrameAddress,
    regs: &mut UnwindRegsX86_64,
    read: &mut F,
) -> Option<u64>
where
    F: FnMut(u64) -> Result<u64, ()>,
{
    match Rule::unpack(found.0) {
        Rule::End => None,
        Rule::Slow => learn
            .snap
            .unwinder
            .unwind_frame(f, regs, learn.framehop, read)
            .ok()
            .flatten(),
        Rule::Step {
            from_bp,
            offset,
            bp_at,
        } => {
            let (sp, bp) = (regs.sp(), regs.bp());
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
                Some(at) => read(cfa.checked_add_signed(i64::from(at))?).ok()?,
                None => bp,
            };
            if ra == 0 {
                return None;
            }
            regs.set_ip(ra);
            regs.set_sp(cfa);
            regs.set_bp(new_bp);
            Some(ra)
        }
    }
}

/// The rule framehop applies to the frame at `f`, from two probes that must agree, and the
/// module `f` lies in.
#[cold]
#[inline(never)]
fn learnt(learn: &mut Learn<'_>, f: FrameAddress) -> Found {
    let [a, b] = PROBES.map(|(sp, bp)| probe(learn, f, sp, bp));
    let rule = if a == b { a } else { Rule::Slow };
    let module = match learn.snap.find(f.address_for_lookup()) {
        Some(i) if (i as u64) < NO_MODULE => {
            let validate = if learn.snap.mods[i].validate {
                VALIDATE
            } else {
                0
            };
            (i as u64) << 8 | validate
        }
        Some(_) => NO_MODULE << 8 | VALIDATE,
        None => NO_MODULE << 8,
    };
    Found(rule.pack() | module)
}

/// Lets framehop step the frame at `f` from `rsp = sp`, `rbp = bp` over a stack whose words
/// hold their own addresses, tagged, and reads the rule off the result.
fn probe(learn: &mut Learn<'_>, f: FrameAddress, sp: u64, bp: u64) -> Rule {
    let near = |a: u64, base: u64| a.wrapping_sub(base).wrapping_add(REACH) <= 2 * REACH;
    let mut read = |a: u64| {
        if near(a, sp) || near(a, bp) {
            Ok(a | TAG)
        } else {
            Err(())
        }
    };
    let mut regs = UnwindRegsX86_64::new(f.address(), sp, bp);
    let ra = match learn
        .snap
        .unwinder
        .unwind_frame(f, &mut regs, learn.framehop, &mut read)
    {
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
    use super::{Found, Rule, Rules, NO_MODULE, SLOTS, VALIDATE};

    #[test]
    fn rules_pack_and_unpack() {
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
                offset: 512 << 10,
                bp_at: Some(-(512 << 10)),
            },
        ] {
            assert_ne!(r.pack(), 0);
            assert_eq!(Rule::unpack(r.pack()), r);
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
        let mut rules = Rules::new();
        rules.follow(1);
        let key = 0x7f00_1234_5678u64 << 1;
        // Other keys of the same pair, found by search.
        let same: Vec<u64> = (1..1_000_000u64)
            .map(|k| key + 2 * k)
            .filter(|&k| Rules::pair(k) == Rules::pair(key))
            .take(2)
            .collect();
        let (a, b) = (Found(Rule::End.pack()), Found(Rule::Slow.pack()));
        rules.put(key, a);
        rules.put(same[0], b);
        assert_eq!(rules.get(key).map(|f| f.0), Some(a.0));
        assert_eq!(rules.get(same[0]).map(|f| f.0), Some(b.0));
        // A third evicts the older of the two.
        rules.put(same[1], a);
        assert!(rules.get(key).is_none());
        assert!(rules.get(same[0]).is_some() && rules.get(same[1]).is_some());
        // Another snapshot: nothing is kept.
        rules.follow(2);
        assert!(rules.get(same[0]).is_none());
        assert!(Rules::pair(key) + 1 < SLOTS);
    }
}
