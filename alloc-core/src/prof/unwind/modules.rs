//! The module list: which code is mapped where and with what unwind information, published as
//! an immutable snapshot behind an atomic pointer.
//!
//! Readers (walks) never take a lock: they announce themselves in their thread's shard of
//! [`READERS`], load [`CURRENT`] and use that snapshot until they leave. A refresh (one thread at a time, by
//! try-lock: a thread that finds a refresh running just walks with the snapshot it has) builds
//! a whole new snapshot from `dl_iterate_phdr`, swaps it in, and retires the old one; retired
//! snapshots are freed by a later refresh that sees no reader at all. A reader counts itself
//! before loading the pointer, so a refresh that reads every shard at 0 after its swap knows
//! nobody still holds an older snapshot. The counts are sharded, a cache line each, because
//! two threads sampling at once passed one shared line back and forth twice a walk, and the
//! pointer with it.
//!
//! `dlclose` safety: every module's `.eh_frame_hdr` and `.eh_frame` are **copied** into
//! memory the snapshot owns, while `dl_iterate_phdr` holds the loader's lock (a module cannot
//! be unmapped while it is in the list that lock protects). A walk therefore reads only its
//! snapshot's own copies and the thread's stack, never a library's mapping, and a library
//! unloaded mid-walk cannot make it fault. What is never unmapped is read in place: the main
//! program, the vDSO, the dynamic loader, libc and the module holding the allocator (whose
//! code runs every walk). The cost is memory: the copies of every other library's unwind
//! tables (a few MiB for a JVM), kept while a snapshot refers to them; copying libc's, the
//! loader's and the allocator's too cost every profiled program about 60 page faults and
//! 240 KiB.
//!
//! Staleness: a walk checks that each module it passes through is still the object at that
//! address with `_dl_find_object` (lock-free on glibc 2.35+; same mapping bounds, link map and
//! `.eh_frame_hdr` address), once per module per walk (not for the allocator's own module and
//! libc's, which are never unloaded), and that each program counter outside
//! every known module is really outside every loaded object (JIT code) rather than in a library
//! loaded since; either failure triggers a refresh and a second walk. One replacement escapes
//! that check: a library closed and another of identical layout loaded at the same address
//! whose link map the loader happened to reuse. `invalidate_modules` (called by a `dlclose`
//! hook) covers it; without the hook such frames may be unwound with the old tables — a wrong
//! stack, never a wrong read. Without `_dl_find_object` (glibc < 2.35), unknown program counters
//! trigger a refresh at most once per [`BLIND_REFRESH_EVERY`] such walks, and unloads are seen
//! only through `invalidate_modules`.

use crate::platform::lock::Padded;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::{Deref, Range};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use framehop::x86_64::UnwinderX86_64;
use framehop::{AllocationPolicy, ExplicitModuleSectionInfo, Module, Unwinder};

/// Bytes of unwind information: borrowed for code that is never unmapped, owned otherwise.
pub(super) enum Section {
    /// In a mapping that stays while the process runs (see the module docs).
    Mapped(&'static [u8]),
    /// A copy owned by the module (and so by every snapshot that holds it).
    Owned(Box<[u8]>),
}

impl Default for Section {
    fn default() -> Self {
        Section::Mapped(&[])
    }
}

impl Deref for Section {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Section::Mapped(s) => s,
            Section::Owned(b) => b,
        }
    }
}

/// framehop's allocation policy for walks: like its `MustNotAllocateDuringUnwind`, all of
/// gimli's working storage is fixed-size, but sized for x86-64 SysV code rather than for every
/// DWARF register: 32 register rules per CFI row (code saves at most the 6 callee-saved
/// registers and the return address) instead of 192, and a 16-value expression stack instead
/// of 64. That shrinks the deepest walk frame (gimli's `next_row`) from about 6.4 KiB to about
/// 1.5 KiB, so a walk fits on an 8 KiB signal stack, and the per-thread cache from ~35 KiB to
/// ~14 KiB. A CFI program that needs more fails in gimli, and framehop falls back to the frame
/// pointer for that frame.
pub(super) struct LeanCfi;

/// The fixed-size gimli storage of [`LeanCfi`].
pub(super) struct LeanStorage;

impl<RO: gimli::ReaderOffset> gimli::UnwindContextStorage<RO> for LeanStorage {
    type Rules = [(gimli::Register, gimli::RegisterRule<RO>); 32];
    type Stack = [gimli::UnwindTableRow<RO, Self>; 4];
}

impl<R: gimli::Reader> gimli::EvaluationStorage<R> for LeanStorage {
    type Stack = [gimli::Value; 16];
    type ExpressionStack = [(R, R); 4];
    type Result = [gimli::Piece<R>; 1];
}

impl AllocationPolicy for LeanCfi {
    type GimliUnwindContextStorage<R: gimli::ReaderOffset> = LeanStorage;
    type GimliEvaluationStorage<R: gimli::Reader> = LeanStorage;
}

/// The framehop unwinder over our section type, allocation-free during walks.
pub(super) type FhUnwinder = UnwinderX86_64<Section, LeanCfi>;

/// One loaded object as the snapshot knows it.
pub(super) struct ModInfo {
    /// Start of the object's mapping (lowest PT_LOAD, page-aligned down).
    pub start: u64,
    /// End of the object's mapping (highest PT_LOAD end).
    pub end: u64,
    /// Load bias (`dlpi_addr`).
    bias: u64,
    /// Hash of the `.eh_frame_hdr` bytes, to tell a different library at the same address.
    fingerprint: u64,
    /// What `_dl_find_object` said about this object when it was learnt. Zero when it could
    /// not be asked.
    found: FoundObject,
    /// Whether walks should validate this module with `_dl_find_object`.
    pub validate: bool,
    /// Bytes of unwind information copied for this module (0: read in place).
    copied: usize,
    module: Module<Section>,
}

/// An immutable list of modules and the unwinder built over it.
pub(super) struct Snapshot {
    /// The framehop unwinder holding every module.
    pub unwinder: FhUnwinder,
    /// Which snapshot this is (counting from 1): the walk's rule tables follow it.
    pub generation: u64,
    /// The same modules, sorted by start address.
    pub mods: Vec<ModInfo>,
    /// `start..end` of each module in `mods`, packed for [`Snapshot::find`]: a walk looks a
    /// module up at every change of module, and a search over `mods` itself touched a cache
    /// line per probe.
    ranges: Vec<(u64, u64)>,
    /// Next snapshot in the retired list (only touched under the refresh lock).
    retired_next: AtomicPtr<Snapshot>,
}

impl Snapshot {
    /// Bytes of unwind tables its modules hold as copies.
    pub fn copied_bytes(&self) -> usize {
        self.mods.iter().map(|m| m.copied).sum()
    }

    /// Bytes copied for the module containing `addr`, if one does.
    #[cfg(test)]
    pub fn copied_for(&self, addr: u64) -> Option<usize> {
        self.find(addr).map(|i| self.mods[i].copied)
    }

    /// Index of the module containing `addr`.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.0 <= addr);
        if i == 0 {
            return None;
        }
        (addr < self.ranges[i - 1].1).then_some(i - 1)
    }

    /// Whether module `i` is still the object loaded at `addr` (`addr` inside it).
    pub fn still_loaded(&self, i: usize, addr: u64) -> bool {
        let m = &self.mods[i];
        find_object(addr).is_some_and(|o| o == m.found)
    }
}

/// The current snapshot (null before the first refresh).
static CURRENT: AtomicPtr<Snapshot> = AtomicPtr::new(ptr::null_mut());

/// Shards of the walks' counters; a thread uses its lane's (see `stack::lane`).
pub(super) const SHARDS: usize = super::stack::LANES;

/// One shard of the walks' counters (each on a cache line of its own).
struct Shard {
    /// Walks of this shard's threads now holding some snapshot.
    active: AtomicUsize,
    /// Captures of this shard's threads that returned frames.
    captures: AtomicU64,
}

static READERS: [Padded<Shard>; SHARDS] = [const {
    Padded(Shard {
        active: AtomicUsize::new(0),
        captures: AtomicU64::new(0),
    })
}; SHARDS];

/// Counts a walk that returned frames, in `shard`: a statistic, so a plain load and store
/// (no locked instruction); two threads of one lane that count at the same instant may lose
/// one.
pub(super) fn count_capture(shard: usize) {
    let c = &READERS[shard % SHARDS].captures;
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Walks that returned frames, over all shards.
pub(super) fn captures() -> u64 {
    READERS
        .iter()
        .map(|r| r.captures.load(Ordering::Relaxed))
        .sum()
}
/// The refresh try-lock: 0 free, else the pid of the process whose thread holds it (so that a
/// child forked mid-refresh can take it over).
static REFRESH_LOCK: AtomicU32 = AtomicU32::new(0);
/// Head of the list of retired snapshots not yet freed.
static RETIRED: AtomicPtr<Snapshot> = AtomicPtr::new(ptr::null_mut());
/// Set by `invalidate` (e.g. after `dlclose`): the next walk refreshes first.
pub(super) static STALE: AtomicBool = AtomicBool::new(false);
/// Moves on at every refresh (once the new snapshot is published) and every `invalidate`: a
/// walk kept in a `TraceMemo` under another value may no longer be what a walk would find.
pub(super) static EPOCH: AtomicU64 = AtomicU64::new(0);

/// How many refreshes were made.
pub(super) static REFRESHES: AtomicU64 = AtomicU64::new(0);
/// How many retired snapshots were freed.
pub(super) static FREED: AtomicU64 = AtomicU64::new(0);
/// Walks that saw an unknown program counter without `_dl_find_object` to classify it.
static BLIND_UNKNOWN: AtomicU64 = AtomicU64::new(0);
/// Without `_dl_find_object`, refresh on every this-many walks that saw unknown code.
pub(super) const BLIND_REFRESH_EVERY: u64 = 1024;

/// A reader's hold on the current snapshot; dropping it releases the hold.
pub(super) struct Hold {
    snap: *const Snapshot,
    shard: &'static Shard,
}

impl Hold {
    /// Announces a reader in `shard` and loads the current snapshot.
    #[inline]
    pub fn acquire(shard: usize) -> Option<Hold> {
        let shard = &READERS[shard % SHARDS];
        shard.active.fetch_add(1, Ordering::SeqCst);
        let snap = CURRENT.load(Ordering::SeqCst);
        if snap.is_null() {
            shard.active.fetch_sub(1, Ordering::Release);
            return None;
        }
        Some(Hold { snap, shard })
    }

    /// The held snapshot.
    #[inline]
    pub fn snapshot(&self) -> &Snapshot {
        // SAFETY: a snapshot is freed only by a refresh that saw ACTIVE == 0 after retiring it;
        // this hold counted itself in ACTIVE before loading the pointer (see the module docs).
        unsafe { &*self.snap }
    }
}

impl Drop for Hold {
    #[inline]
    fn drop(&mut self) {
        self.shard.active.fetch_sub(1, Ordering::Release);
    }
}

/// Whether walks without `_dl_find_object` should refresh for this unknown-code walk.
pub(super) fn blind_refresh_due() -> bool {
    BLIND_UNKNOWN
        .fetch_add(1, Ordering::Relaxed)
        .is_multiple_of(BLIND_REFRESH_EVERY)
}

// ---------------------------------------------------------------------------------------------
// _dl_find_object

/// glibc's `struct dl_find_object` on x86-64 (no `dlfo_eh_dbase`, no `dlfo_eh_count`).
#[repr(C)]
struct DlFindObject {
    flags: u64,
    map_start: *mut libc::c_void,
    map_end: *mut libc::c_void,
    link_map: *mut libc::c_void,
    eh_frame: *mut libc::c_void,
    reserved: [u64; 7],
}

type DlFindObjectFn = unsafe extern "C" fn(*mut libc::c_void, *mut DlFindObject) -> libc::c_int;

/// `_dl_find_object`, looked up once by `init` (0: not available).
static DL_FIND_OBJECT: AtomicUsize = AtomicUsize::new(0);

/// Looks `_dl_find_object` up. Takes the loader's lock and may allocate; called by `init`.
pub(super) fn resolve_dl_find_object() {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; the result is only used as
    // the function glibc documents under that name.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
    DL_FIND_OBJECT.store(f as usize, Ordering::Release);
}

/// Whether `_dl_find_object` is available.
#[inline]
pub(super) fn have_find_object() -> bool {
    DL_FIND_OBJECT.load(Ordering::Relaxed) != 0
}

/// What `_dl_find_object` knows of the object containing an address: enough to tell whether
/// the object at an address is still the one a snapshot learnt.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FoundObject {
    map_start: usize,
    map_end: usize,
    link_map: usize,
    eh_frame: usize,
}

/// Asks `_dl_find_object` (lock-free, allocation-free) for the object containing `addr`.
pub(super) fn find_object(addr: u64) -> Option<FoundObject> {
    let f = DL_FIND_OBJECT.load(Ordering::Relaxed);
    if f == 0 {
        return None;
    }
    // SAFETY: `f` is the non-null address dlsym gave for `_dl_find_object`, whose type is
    // `DlFindObjectFn`.
    let f: DlFindObjectFn = unsafe { core::mem::transmute::<usize, DlFindObjectFn>(f) };
    // SAFETY: a zeroed DlFindObject is a valid out-parameter of the layout glibc fills.
    let mut out: DlFindObject = unsafe { core::mem::zeroed() };
    // SAFETY: `_dl_find_object` only reads the loader's tables and writes `out`.
    let rc = unsafe { f(addr as *mut libc::c_void, &mut out) };
    (rc == 0).then_some(FoundObject {
        map_start: out.map_start as usize,
        map_end: out.map_end as usize,
        link_map: out.link_map as usize,
        eh_frame: out.eh_frame as usize,
    })
}

// ---------------------------------------------------------------------------------------------
// Refresh

/// Builds a new snapshot from `dl_iterate_phdr` and publishes it. Returns false when another
/// thread is refreshing (the caller keeps its snapshot). Allocates, and takes the loader's
/// lock: the caller must hold no allocator lock and must have allocation sampling disabled.
/// [`refresh`], but if another thread holds the refresh, waits for it (at most about 10 ms,
/// yielding) and then refreshes again: for a walk that met code the current snapshot lacks,
/// which a refresh that began before that code was loaded would still lack. Bounded, so that a
/// caller inside `dlopen` (holding the loader's lock the other refresh may wait for) cannot
/// deadlock; it then walks with what it has.
pub(super) fn refresh_waiting() -> bool {
    for _ in 0..1000 {
        if refresh() {
            return true;
        }
        if REFRESH_LOCK.load(Ordering::Acquire) != 0 {
            // SAFETY: a plain system call; ~10 µs each at most when another thread runs.
            unsafe { libc::usleep(10) };
        }
    }
    false
}

pub(super) fn refresh() -> bool {
    if !try_lock() {
        return false;
    }
    STALE.store(false, Ordering::Relaxed);
    // As a writer we read the old snapshot while the lock keeps any other writer (the only
    // party that frees snapshots) away.
    let old = CURRENT.load(Ordering::Acquire);
    let mut ctx = RefreshCtx {
        // SAFETY: snapshots are freed only under the refresh lock, which we hold.
        old: unsafe { old.as_ref() },
        mods: Vec::with_capacity(
            // SAFETY: as above.
            unsafe { old.as_ref() }.map_or(16, |s| s.mods.len() + 4),
        ),
        index: 0,
        // SAFETY: getauxval only reads the auxiliary vector.
        vdso: unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as u64,
        // SAFETY: as above.
        loader: unsafe { libc::getauxval(libc::AT_BASE) } as u64,
    };
    // SAFETY: the callback matches dl_iterate_phdr's contract and only uses `ctx` through the
    // pointer we pass, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut ctx as *mut RefreshCtx).cast()) };
    let mut mods = ctx.mods;
    mods.sort_unstable_by_key(|m| m.start);
    let mut unwinder = FhUnwinder::new();
    for m in &mods {
        unwinder.add_module(m.module.clone());
    }
    let ranges = mods.iter().map(|m| (m.start, m.end)).collect();
    let snap = Box::into_raw(Box::new(Snapshot {
        unwinder,
        generation: REFRESHES.load(Ordering::Relaxed) + 1,
        mods,
        ranges,
        retired_next: AtomicPtr::new(ptr::null_mut()),
    }));
    let old = CURRENT.swap(snap, Ordering::SeqCst);
    if !old.is_null() {
        // SAFETY: `old` was a published snapshot; only the lock holder links retired ones.
        unsafe {
            (*old)
                .retired_next
                .store(RETIRED.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        RETIRED.store(old, Ordering::Relaxed);
    }
    if READERS.iter().all(|r| r.active.load(Ordering::SeqCst) == 0) {
        let mut p = RETIRED.swap(ptr::null_mut(), Ordering::Relaxed);
        while !p.is_null() {
            // SAFETY: every retired snapshot was unpublished before the zero counts we just
            // read, so no reader holds it; each came from Box::into_raw and is freed once.
            let b = unsafe { Box::from_raw(p) };
            p = b.retired_next.load(Ordering::Relaxed);
            drop(b);
            FREED.fetch_add(1, Ordering::Relaxed);
        }
    }
    REFRESHES.fetch_add(1, Ordering::Relaxed);
    EPOCH.fetch_add(1, Ordering::Release);
    unlock();
    true
}

fn try_lock() -> bool {
    // SAFETY: getpid is a plain system call.
    let me = unsafe { libc::getpid() } as u32;
    match REFRESH_LOCK.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => true,
        // Held by a thread of the parent we were forked from: it will never release it here.
        Err(holder) if holder != me => REFRESH_LOCK
            .compare_exchange(holder, me, Ordering::Acquire, Ordering::Relaxed)
            .is_ok(),
        Err(_) => false,
    }
}

fn unlock() {
    REFRESH_LOCK.store(0, Ordering::Release);
}

struct RefreshCtx<'a> {
    old: Option<&'a Snapshot>,
    mods: Vec<ModInfo>,
    index: usize,
    vdso: u64,
    /// The dynamic loader's load address (`AT_BASE`; 0 for a static program).
    loader: u64,
}

/// The `dl_iterate_phdr` callback: records one object. Runs under the loader's lock, so the
/// object's mapping stays valid for the whole call.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the RefreshCtx passed by `refresh`; `info` is valid for this call.
    let (ctx, info) = unsafe { (&mut *data.cast::<RefreshCtx>(), &*info) };
    let is_main = ctx.index == 0;
    ctx.index += 1;
    if info.dlpi_phdr.is_null() || info.dlpi_phnum == 0 {
        return 0;
    }
    // SAFETY: glibc gives `dlpi_phnum` program headers at `dlpi_phdr`.
    let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let bias = info.dlpi_addr;
    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut text: Option<Range<u64>> = None;
    let mut hdr: Option<Range<u64>> = None;
    for ph in phdrs {
        match ph.p_type {
            libc::PT_LOAD => {
                start = start.min(ph.p_vaddr & !4095);
                end = end.max(ph.p_vaddr + ph.p_memsz);
                if ph.p_flags & libc::PF_X != 0 && text.is_none() {
                    text = Some(ph.p_vaddr..ph.p_vaddr + ph.p_memsz);
                }
            }
            libc::PT_GNU_EH_FRAME => hdr = Some(ph.p_vaddr..ph.p_vaddr + ph.p_memsz),
            _ => {}
        }
    }
    if start >= end {
        return 0;
    }
    let (start, end) = (bias.wrapping_add(start), bias.wrapping_add(end));
    let is_vdso = ctx.vdso != 0 && bias == ctx.vdso;
    let hdr_bytes: &'static [u8] = match &hdr {
        // SAFETY: the header segment is mapped (loader lock held, see above).
        Some(r) => unsafe {
            core::slice::from_raw_parts(
                bias.wrapping_add(r.start) as *const u8,
                (r.end - r.start) as usize,
            )
        },
        None => &[],
    };
    let fingerprint = fnv1a(hdr_bytes);
    if let Some(old) = ctx.old {
        if let Some(i) = old.find(start) {
            let m = &old.mods[i];
            if m.start == start && m.end == end && m.bias == bias && m.fingerprint == fingerprint {
                ctx.mods.push(m.clone());
                return 0;
            }
        }
    }
    let found = find_object(start.max(bias.wrapping_add(text.as_ref().map_or(0, |t| t.start))));
    let is_loader = ctx.loader != 0 && bias == ctx.loader;
    let borrow = is_main || is_vdso || is_loader || never_unloaded(start..end);
    let mut copied = 0;
    let mut sections = ExplicitModuleSectionInfo::<Section> {
        base_svma: 0,
        text_svma: text,
        ..Default::default()
    };
    if let Some(hdr_svma) = hdr {
        // SAFETY: the mapping is valid during the callback; `eh_frame_extent` bounds every read
        // by the PT_LOAD segment holding the data.
        if let Some(eh) = unsafe { eh_frame_extent(hdr_bytes, bias + hdr_svma.start, phdrs, bias) }
        {
            // SAFETY: as above; the range was checked to lie inside a loaded segment.
            let eh_bytes: &'static [u8] = unsafe {
                core::slice::from_raw_parts(eh.start as *const u8, (eh.end - eh.start) as usize)
            };
            let (h, e) = if borrow {
                (Section::Mapped(hdr_bytes), Section::Mapped(eh_bytes))
            } else {
                copied = hdr_bytes.len() + eh_bytes.len();
                (
                    Section::Owned(hdr_bytes.into()),
                    Section::Owned(eh_bytes.into()),
                )
            };
            sections.eh_frame_hdr_svma = Some(hdr_svma);
            sections.eh_frame_hdr = Some(h);
            sections.eh_frame_svma = Some(eh.start - bias..eh.end - bias);
            sections.eh_frame = Some(e);
        }
    }
    ctx.mods.push(ModInfo {
        start,
        end,
        bias,
        fingerprint,
        validate: found.is_some() && !borrow,
        copied,
        found: found.unwrap_or_default(),
        module: Module::new(String::new(), start..end, bias, sections),
    });
    0
}

/// Whether the module at `range` can never be unloaded while a walk runs, so that walks need
/// not ask `_dl_find_object` whether it is still loaded: the module holding this code (the
/// allocator is in every stack it walks) and libc's.
fn never_unloaded(range: Range<u64>) -> bool {
    let own = never_unloaded as fn(Range<u64>) -> bool as usize as u64;
    let libc = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize as u64;
    range.contains(&own) || range.contains(&libc)
}

/// Finds `.eh_frame` from `.eh_frame_hdr` (its `eh_frame_ptr`) and its length by walking the
/// CIE/FDE length fields to the zero terminator, never past the end of the file-backed part of
/// the PT_LOAD segment that holds it. Returns the absolute address range.
///
/// # Safety
/// The object described by `phdrs` and `bias` must stay mapped during the call.
unsafe fn eh_frame_extent(
    hdr: &[u8],
    hdr_addr: u64,
    phdrs: &[libc::Elf64_Phdr],
    bias: u64,
) -> Option<Range<u64>> {
    if hdr.len() < 8 || hdr[0] != 1 {
        return None;
    }
    let enc = hdr[1];
    let field = hdr_addr + 4;
    let raw = &hdr[4..];
    let (value, _) = read_encoded(raw, enc)?;
    let base = match enc & 0x70 {
        0x00 => 0,        // DW_EH_PE_absptr
        0x10 => field,    // DW_EH_PE_pcrel
        0x30 => hdr_addr, // DW_EH_PE_datarel: relative to .eh_frame_hdr
        _ => return None,
    };
    let start = base.wrapping_add(value);
    let seg_end = phdrs.iter().find_map(|ph| {
        let lo = bias + ph.p_vaddr;
        let hi = lo + ph.p_filesz;
        (ph.p_type == libc::PT_LOAD && start >= lo && start < hi).then_some(hi)
    })?;
    let mut p = start;
    while p + 4 <= seg_end {
        // SAFETY: [p, p + 4) lies inside the loaded segment (checked by the loop condition).
        let len = unsafe { (p as *const u32).read_unaligned() } as u64;
        if len == 0 {
            p += 4;
            break;
        }
        let next = if len == 0xffff_ffff {
            if p + 12 > seg_end {
                break;
            }
            // SAFETY: [p + 4, p + 12) lies inside the segment (checked just above).
            let len64 = unsafe { ((p + 4) as *const u64).read_unaligned() };
            (p + 12).checked_add(len64)
        } else {
            Some(p + 4 + len)
        };
        match next {
            Some(n) if n <= seg_end => p = n,
            _ => break,
        }
    }
    (p > start).then_some(start..p.min(seg_end))
}

/// Reads a DWARF pointer-encoded value's raw data (the application is done by the caller).
fn read_encoded(b: &[u8], enc: u8) -> Option<(u64, usize)> {
    let take = |n: usize| b.get(..n);
    Some(match enc & 0x0f {
        0x03 => (u32::from_le_bytes(take(4)?.try_into().ok()?) as u64, 4), // udata4
        0x0b => (
            i32::from_le_bytes(take(4)?.try_into().ok()?) as i64 as u64,
            4,
        ), // sdata4
        0x00 | 0x04 | 0x0c => (u64::from_le_bytes(take(8)?.try_into().ok()?), 8), // absptr/data8
        _ => return None,
    })
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h = (h ^ x as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^ b.len() as u64
}

impl Clone for ModInfo {
    fn clone(&self) -> Self {
        ModInfo {
            module: self.module.clone(),
            found: self.found,
            ..*self
        }
    }
}
