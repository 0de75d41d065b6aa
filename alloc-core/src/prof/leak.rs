//! The leak summary printed at exit (`prof_leak`): the estimated memory still allocated and its
//! top call sites, named through the dynamic loader's symbols. Allocates nothing.

use crate::base::config;
use crate::base::fmath;
use crate::platform::os::Line;
use crate::prof::heap_v2;
use crate::prof::table::{StackEntry, MAX_FRAMES};
use crate::thread::InProfiler;

/// Appends a byte count in human units (`512 B`, `3.2 KiB`, `1.5 MiB`, `2.0 GiB`).
pub fn human_bytes(l: &mut Line, bytes: f64) {
    let units = [
        ("B", 1.0),
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
    ];
    let (name, scale) = units
        .iter()
        .rev()
        .find(|(_, s)| bytes >= *s)
        .copied()
        .unwrap_or(units[0]);
    if scale == 1.0 {
        l.dec(fmath::round(bytes) as u64);
    } else {
        let tenths = fmath::round(bytes / scale * 10.0) as u64;
        l.dec(tenths / 10).str(".").dec(tenths % 10);
    }
    l.str(" ").str(name);
}

/// Prints, on stderr, the estimated memory still allocated at exit and its top call sites.
pub fn leak_summary() {
    let _reentry = InProfiler::enter();
    const TOP: usize = 5;
    let mut top: [(f64, *const StackEntry); TOP] = [(0.0, core::ptr::null()); TOP];
    let (mut bytes, mut objects, mut sites) = (0.0, 0.0, 0u64);
    for e in heap_v2::entries() {
        let c = e.counts();
        if c.live_samples == 0 {
            continue;
        }
        bytes += c.live_bytes;
        objects += c.live_objects;
        sites += 1;
        if let Some(i) = top.iter().position(|t| c.live_bytes > t.0) {
            top.copy_within(i..TOP - 1, i + 1);
            top[i] = (c.live_bytes, e);
        }
    }
    let mut l = Line::new();
    l.str("sampalloc: leak summary: about ");
    human_bytes(&mut l, bytes);
    l.str(" in about ")
        .dec(fmath::round(objects) as u64)
        .str(" objects from ")
        .dec(sites)
        .str(" call sites still allocated at exit (1 sample per ");
    human_bytes(&mut l, (1u64 << config::lg_prof_sample()) as f64);
    l.str(")").emit();
    for &(b, e) in top.iter().take_while(|t| !t.1.is_null()) {
        // SAFETY: entries are never freed.
        let e = unsafe { &*e };
        let c = e.counts();
        let mut l = Line::new();
        l.str("sampalloc:   ");
        human_bytes(&mut l, b);
        l.str(" in ")
            .dec(fmath::round(c.live_objects) as u64)
            .str(" objects at");
        for (i, &pc) in e.frames().iter().take(MAX_FRAMES.min(4)).enumerate() {
            l.str(if i == 0 { " " } else { " <- " });
            describe_pc(&mut l, pc);
        }
        l.emit();
    }
}

/// Appends `symbol (module)` for a return address, or the address.
fn describe_pc(l: &mut Line, pc: usize) {
    // SAFETY: dladdr only reads loader state; `info` is a valid out-parameter.
    unsafe {
        let mut info: libc::Dl_info = core::mem::zeroed();
        if libc::dladdr((pc - 1) as *const libc::c_void, &mut info) != 0 {
            if !info.dli_sname.is_null() {
                l.bytes(core::ffi::CStr::from_ptr(info.dli_sname).to_bytes());
            } else {
                l.hex(pc);
            }
            if !info.dli_fname.is_null() {
                let path = core::ffi::CStr::from_ptr(info.dli_fname).to_bytes();
                let base = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
                l.str(" (").bytes(base).str(")");
            }
            return;
        }
    }
    l.hex(pc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        let mut l = Line::new();
        human_bytes(&mut l, 512.0);
        l.str("|");
        human_bytes(&mut l, 1536.0);
        l.str("|");
        human_bytes(&mut l, 3.0 * 1048576.0);
        assert_eq!(l.as_bytes(), b"512 B|1.5 KiB|3.0 MiB");
    }
}
