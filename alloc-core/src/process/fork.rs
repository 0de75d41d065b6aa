//! Fork safety: every engine lock is taken before `fork` and released (parent) or reset
//! (child) after it, so the child never inherits a lock held by a thread that does not exist
//! in it. Registered with `pthread_atfork` before any other library's handlers (see
//! `platform::fork_guard`).
//!
//! Lock order, outermost first: profile-dump buffer, thread-cache list, arena growth, arena
//! bins, arena pages, huge cache, profiler table, metadata. Every path that nests
//! locks follows it.

use crate::base::meta;
use crate::pool::{arena, huge};
use crate::prof::{heap_v2, table, trigger};
use crate::thread::{self, cache};

/// Before `fork`: take every lock.
pub extern "C" fn prefork() {
    heap_v2::prefork();
    cache::prefork();
    arena::prefork();
    huge::prefork();
    table::prefork();
    meta::prefork();
}

/// After `fork`, in the parent: release every lock.
pub extern "C" fn postfork_parent() {
    meta::postfork_parent();
    table::postfork_parent();
    huge::postfork_parent();
    arena::postfork_parent();
    cache::postfork_parent();
    heap_v2::postfork_parent();
}

/// After `fork`, in the child: reset every lock, then return the caches of the threads that
/// did not survive.
pub extern "C" fn postfork_child() {
    meta::postfork_child();
    table::postfork_child();
    trigger::postfork_child();
    huge::postfork_child();
    arena::postfork_child();
    cache::postfork_child(thread::cache());
    heap_v2::postfork_child();
}
