//! glibc's `__register_atfork`, what `pthread_atfork` calls (programs and libraries link
//! `pthread_atfork` itself statically, from `libc_nonshared.a`): interposed so that the
//! engine's fork handlers are registered before any other library's.
//!
//! glibc runs the prepare handlers in the reverse order of registration and the parent and
//! child ones in order. The engine registers its own lazily (when the process first has a
//! second thread, see the engine's `fork_guard`); registered after another library's, they
//! would take every engine lock before that library's prepare handler runs and reset them
//! only after its child handler ran, and a handler that allocates would wait for ever (gRPC's
//! fork support, for one, allocates in its child handler). So any registration first
//! registers the engine's, then goes on to glibc's. The library's constructor tells the
//! engine so ([`note_interposer`]): only then may it wait for a second thread to register.

use core::ffi::{c_int, c_void};
use core::sync::atomic::AtomicUsize;
use sampalloc_core as engine;

/// A fork handler, as `pthread_atfork` takes it (null: none).
pub type Handler = Option<unsafe extern "C" fn()>;

/// glibc's `__register_atfork`, as found (0: not looked up yet).
#[link_section = ".data.sampalloc_hot"] // see `platform::os` (engine), hot statics
static REAL: AtomicUsize = AtomicUsize::new(0);

type RegisterAtfork = unsafe extern "C" fn(Handler, Handler, Handler, *mut c_void) -> c_int;

/// Registers the engine's fork handlers if they are not yet, then `prepare`, `parent` and
/// `child` for the object `dso` with glibc. Returns glibc's result (0, or `ENOMEM`), or
/// `ENOMEM` where there is no glibc function to call.
///
/// # Safety
/// As for `pthread_atfork`: the handlers must be valid for as long as `dso` is loaded.
pub unsafe fn register(
    prepare: Handler,
    parent: Handler,
    child: Handler,
    dso: *mut c_void,
) -> c_int {
    engine::ensure_ready();
    // The engine's own registration comes back here, through its `pthread_atfork`, and goes
    // straight on: it is already under way.
    engine::register_fork_handlers_now();
    let f = crate::next_symbol(&REAL, c"__register_atfork");
    if f == 0 {
        return libc::ENOMEM;
    }
    // SAFETY: `f` is glibc's `__register_atfork`, of this type; the caller keeps its contract.
    unsafe { core::mem::transmute::<usize, RegisterAtfork>(f)(prepare, parent, child, dso) }
}

/// Run by the dynamic loader with the library's constructors: tells the engine that other
/// libraries' registrations come through [`register`] (see the engine's `fork_guard`).
extern "C" fn note_interposer() {
    engine::atfork_interposed();
}

#[used]
#[link_section = ".init_array"]
static NOTE_INTERPOSER: extern "C" fn() = note_interposer;
