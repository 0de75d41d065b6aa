//! A sampling thread's last walk, repeated without walking when nothing it depended on changed.
//!
//! A walk is a function of its starting registers, the module snapshot (which gives each code
//! address its rule) and the stack words it reads: each read's address follows from the
//! registers and the words read before it. So when a walk starts from the same `pc` and `sp`
//! (and `rbp`, if a rule used the register's own value), under the same snapshot, and every
//! word the last one read still holds the value it read, the walk would read the same words
//! again and find the same frames: the memo gives them back after one load and compare per
//! word read, instead of a rule lookup and a step per frame. Programs allocate most of their
//! bytes, and so take most of their samples, at a few call sites in loops, where the stack
//! under the call site is the same from sample to sample.
//!
//! The unwinder (`prof::unwind`) fills and checks the memo: it keeps only walks that need no
//! module check (every frame in a module that is never unloaded: a `dlclose` cannot turn one
//! of their addresses into another function), and only short ones (see [`MEMO_READS`]). The
//! memo lives in the sampling thread's cache, not in the unwinder's initial-exec block, which
//! must stay small; the profiler notes beside it what it derived from the frames (their stack
//! entry), to reuse it when the memo gives them back.

/// Stack words a memo holds at most (a walk reads one or two a frame): a deeper stack is walked
/// every time.
pub const MEMO_READS: usize = 32;
/// Frames a memo holds at most.
pub const MEMO_FRAMES: usize = 24;

/// One thread's last walk (see the module docs). Empty until a walk fills it.
#[derive(Clone, Copy)]
pub struct TraceMemo {
    /// Frames kept: 0 when empty.
    frames_len: u8,
    reads_len: u8,
    /// Whether the walk used the starting `rbp`'s own value (a frame-pointer rule met before
    /// any rule loaded `rbp` from the stack): then `bp` must match too.
    needs_bp: bool,
    pc: u64,
    sp: u64,
    bp: u64,
    /// The entry point's stack pointer the walk kept frames above.
    entry_sp: usize,
    /// The unwinder's epoch (it moves on when the module snapshot may change).
    epoch: u64,
    /// What the profiler derived from the frames (see [`TraceMemo::note`]); 0: nothing.
    noted: usize,
    reads: [(u64, u64); MEMO_READS],
    frames: [usize; MEMO_FRAMES],
}

impl TraceMemo {
    /// An empty memo.
    pub const EMPTY: TraceMemo = TraceMemo {
        frames_len: 0,
        reads_len: 0,
        needs_bp: false,
        pc: 0,
        sp: 0,
        bp: 0,
        entry_sp: 0,
        epoch: 0,
        noted: 0,
        reads: [(0, 0); MEMO_READS],
        frames: [0; MEMO_FRAMES],
    };

    /// Records a stack word the walk being kept read (past [`MEMO_READS`], the walk will not
    /// be kept); `saved_bp`: a saved `rbp`, which matters only if a rule uses it (see
    /// [`TraceMemo::drop_saved_bp_reads`]).
    #[inline(always)]
    pub fn log_read(&mut self, addr: u64, value: u64, saved_bp: bool) {
        let i = self.reads_len as usize;
        if i < MEMO_READS {
            self.reads[i] = (addr | u64::from(saved_bp), value);
        }
        self.reads_len = self.reads_len.saturating_add(1);
    }

    /// Forgets the saved `rbp`s the walk read whose values no rule used: the `k`-th read is
    /// kept if bit `k` of `used` is set (from the 32nd on, always). A function saves its
    /// caller's `rbp`, often a loop's counter in code without frame pointers: that value
    /// differs from one call to the next without changing the frames found.
    pub fn drop_saved_bp_reads(&mut self, used: u32) {
        if self.reads_len as usize > MEMO_READS {
            return;
        }
        let mut kept = 0;
        let mut k = 0u32;
        for i in 0..self.reads_len as usize {
            let saved_bp = self.reads[i].0 & 1 != 0;
            if !saved_bp || k >= 32 || used & (1 << k) != 0 {
                self.reads[kept] = self.reads[i];
                kept += 1;
            }
            k += u32::from(saved_bp);
        }
        self.reads_len = kept as u8;
    }

    /// Starts keeping walks made in the unwinder's `epoch` (see [`TraceMemo::start`]).
    pub fn begin(&mut self, epoch: u64) {
        self.start();
        self.epoch = epoch;
    }

    /// Starts keeping a walk: forgets the last one, its reads and what was noted of it.
    pub fn start(&mut self) {
        self.frames_len = 0;
        self.reads_len = 0;
        self.noted = 0;
    }

    /// Notes what the profiler derived from the kept frames (not 0), for [`TraceMemo::noted`].
    pub fn note(&mut self, value: usize) {
        self.noted = value;
    }

    /// What was noted of the kept frames since they were kept (0: nothing).
    pub fn noted(&self) -> usize {
        self.noted
    }

    /// Keeps the walk just made (its reads already logged): from registers `regs` (`pc`, `sp`,
    /// `rbp`), keeping frames above `entry_sp`, in the epoch given to [`TraceMemo::begin`];
    /// `frames` is what it found (1 to [`MEMO_FRAMES`], read with at most [`MEMO_READS`]
    /// words; otherwise the memo stays empty).
    pub fn keep(
        &mut self,
        regs: (u64, u64, u64),
        needs_bp: bool,
        entry_sp: usize,
        frames: &[usize],
    ) {
        if frames.is_empty() || frames.len() > MEMO_FRAMES || self.reads_len as usize > MEMO_READS {
            self.frames_len = 0;
            return;
        }
        self.frames[..frames.len()].copy_from_slice(frames);
        self.frames_len = frames.len() as u8;
        (self.pc, self.sp, self.bp) = regs;
        self.needs_bp = needs_bp;
        self.entry_sp = entry_sp;
        self.noted = 0;
    }

    /// The kept frames, if a walk from registers `regs` (`pc`, `sp`, `rbp`) keeping frames
    /// above `entry_sp`, in the unwinder's `epoch`, would find them again: every word the
    /// kept walk read, read again from `[lo, hi)` (the stack the walk runs on), holds the same
    /// value.
    #[inline]
    pub fn recall(
        &self,
        regs: (u64, u64, u64),
        entry_sp: usize,
        epoch: u64,
        lo: u64,
        hi: u64,
    ) -> Option<&[usize]> {
        let (pc, sp, bp) = regs;
        if self.frames_len == 0
            || self.pc != pc
            || self.sp != sp
            || (self.needs_bp && self.bp != bp)
            || self.entry_sp != entry_sp
            || self.epoch != epoch
        {
            return None;
        }
        for &(tagged, value) in &self.reads[..self.reads_len as usize] {
            let addr = tagged & !1;
            if addr < lo || addr > hi - 8 {
                return None;
            }
            // SAFETY: [addr, addr + 8) lies in [lo, hi), the live part of the stack this
            // thread runs on (as for the walk's own reads).
            if unsafe { (addr as *const u64).read_unaligned() } != value {
                return None;
            }
        }
        Some(&self.frames[..self.frames_len as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memo of a walk that read `words` (at their addresses) from registers `regs`.
    fn kept(words: &[u64], regs: (u64, u64, u64), needs_bp: bool) -> TraceMemo {
        let mut m = TraceMemo::EMPTY;
        m.begin(7);
        for w in words {
            m.log_read(w as *const u64 as u64, *w, false);
        }
        m.keep(regs, needs_bp, 0x1000, &[0xaa, 0xbb]);
        m
    }

    #[test]
    fn gives_back_only_what_a_walk_would_find_again() {
        let mut stack = [11u64, 22, 33, 44];
        let (lo, hi) = (stack.as_ptr() as u64, stack.as_ptr() as u64 + 32);
        let regs = (0x5000, lo, 0x77);
        let m = kept(&stack[1..3], regs, false);
        assert_eq!(m.recall(regs, 0x1000, 7, lo, hi), Some(&[0xaa, 0xbb][..]));
        // Another `rbp` does not matter to a walk that never used it...
        assert!(m.recall((0x5000, lo, 0x78), 0x1000, 7, lo, hi).is_some());
        // ... but does to one that did.
        let with_bp = kept(&stack[1..3], regs, true);
        assert!(with_bp
            .recall((0x5000, lo, 0x78), 0x1000, 7, lo, hi)
            .is_none());
        // Another start, entry point or snapshot: no.
        assert!(m.recall((0x5001, lo, 0x77), 0x1000, 7, lo, hi).is_none());
        assert!(m
            .recall((0x5000, lo + 8, 0x77), 0x1000, 7, lo, hi)
            .is_none());
        assert!(m.recall(regs, 0x1008, 7, lo, hi).is_none());
        assert!(m.recall(regs, 0x1000, 8, lo, hi).is_none());
        // A word read outside the stack given: no.
        assert!(m.recall(regs, 0x1000, 7, lo + 16, hi).is_none());
        // A word it read changed: no; a word it did not read: yes.
        stack[0] = 99;
        assert!(m.recall(regs, 0x1000, 7, lo, hi).is_some());
        stack[2] = 99;
        assert!(m.recall(regs, 0x1000, 7, lo, hi).is_none());
        core::hint::black_box(&stack);
    }

    /// A saved `rbp` the walk read counts only if a rule used it.
    #[test]
    fn saved_frame_pointers_count_only_if_used() {
        let mut stack = [11u64, 22];
        let (lo, hi) = (stack.as_ptr() as u64, stack.as_ptr() as u64 + 16);
        let regs = (0x5000, lo, 0);
        let memo = |drop: bool| {
            let mut m = TraceMemo::EMPTY;
            m.begin(0);
            m.log_read(lo, 11, false);
            m.log_read(lo + 8, 22, true);
            m.drop_saved_bp_reads(if drop { 0 } else { 1 });
            m.keep(regs, false, 0, &[1]);
            m
        };
        let (used, unused) = (memo(false), memo(true));
        assert!(used.recall(regs, 0, 0, lo, hi).is_some());
        stack[1] = 23;
        core::hint::black_box(&stack);
        assert!(used.recall(regs, 0, 0, lo, hi).is_none());
        assert!(unused.recall(regs, 0, 0, lo, hi).is_some());
        stack[0] = 12;
        core::hint::black_box(&stack);
        assert!(unused.recall(regs, 0, 0, lo, hi).is_none());
    }

    #[test]
    fn keeps_nothing_it_cannot_give_back_whole() {
        let mut m = TraceMemo::EMPTY;
        m.begin(0);
        let word = 5u64;
        for _ in 0..MEMO_READS {
            m.log_read(&word as *const u64 as u64, word, false);
        }
        let regs = (1, 2, 3);
        m.keep(regs, false, 0, &[]);
        assert!(m.recall(regs, 0, 0, 0, u64::MAX).is_none(), "no frames");
        m.keep(regs, false, 0, &[1; MEMO_FRAMES + 1]);
        assert!(
            m.recall(regs, 0, 0, 0, u64::MAX).is_none(),
            "too many frames"
        );
        m.keep(regs, false, 0, &[1; MEMO_FRAMES]);
        assert!(m.recall(regs, 0, 0, 0, u64::MAX).is_some());
        m.log_read(&word as *const u64 as u64, word, false);
        m.keep(regs, false, 0, &[1; MEMO_FRAMES]);
        assert!(
            m.recall(regs, 0, 0, 0, u64::MAX).is_none(),
            "one read too many"
        );
        m.note(42);
        assert_eq!(m.noted(), 42);
        m.start();
        assert_eq!(m.noted(), 0);
        assert!(
            m.recall(regs, 0, 0, 0, u64::MAX).is_none(),
            "forgotten at a new walk"
        );
    }
}
