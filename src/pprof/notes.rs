//! GNU build IDs (`NT_GNU_BUILD_ID` notes), and the executable segments of the images loaded
//! in this process with their build IDs, read from memory through `dl_iterate_phdr`.

use super::Mapping;

/// `NT_GNU_BUILD_ID`, in a note named `GNU`.
const NT_GNU_BUILD_ID: u32 = 3;

/// The build ID in the ELF notes `notes` (a `PT_NOTE` segment or `SHT_NOTE` section, native
/// byte order), if any.
pub fn gnu_build_id(notes: &[u8]) -> Option<&[u8]> {
    let word = |at: usize| -> Option<u32> {
        let b = notes.get(at..at + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let ty = word(at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(align4(namesz)?)?;
        let next = desc_at.checked_add(align4(descsz)?)?;
        let name = notes.get(name_at..name_at + namesz)?;
        if ty == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return notes.get(desc_at..desc_at + descsz);
        }
        at = next;
    }
    None
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
        s.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
    }
    s
}

/// How many images and executable segments an image [`loaded`] reports at most.
const MAX_IMAGES: usize = 256;
const MAX_SEGMENTS: usize = 4;
const NAME_MAX: usize = 512;
const BUILD_ID_MAX: usize = 64;

/// One image as the loader reports it, in fixed buffers: the callback of `dl_iterate_phdr`
/// copies into these and allocates nothing (it runs under the loader's lock, and an allocation
/// there could be sampled and unwind).
struct Image {
    name: [u8; NAME_MAX],
    name_len: usize,
    segments: [(u64, u64, u64); MAX_SEGMENTS],
    nsegments: usize,
    build_id: [u8; BUILD_ID_MAX],
    build_id_len: usize,
}

struct Collect {
    images: Vec<Image>,
}

/// `dl_iterate_phdr`'s callback: records the image if there is room (never grows the vector).
unsafe extern "C" fn record(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `Collect` that `loaded` passed, alive and not otherwise borrowed
    // during the call; `info` is the loader's valid description of one image.
    let (c, info) = unsafe { (&mut *(data as *mut Collect), &*info) };
    if c.images.len() == c.images.capacity() {
        return 1; // full: stop
    }
    let mut image = Image {
        name: [0; NAME_MAX],
        name_len: 0,
        segments: [(0, 0, 0); MAX_SEGMENTS],
        nsegments: 0,
        build_id: [0; BUILD_ID_MAX],
        build_id_len: 0,
    };
    if !info.dlpi_name.is_null() {
        // SAFETY: the loader's name is a NUL-terminated string valid during the callback.
        let name = unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes();
        if name.len() <= NAME_MAX {
            image.name[..name.len()].copy_from_slice(name);
            image.name_len = name.len();
        }
    }
    let phdrs: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
        &[]
    } else {
        // SAFETY: the loader gives `dlpi_phnum` program headers at `dlpi_phdr`.
        unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
    };
    let bias = info.dlpi_addr;
    for ph in phdrs {
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            if image.nsegments < MAX_SEGMENTS {
                let start = bias.wrapping_add(ph.p_vaddr);
                // Page-aligned, as the kernel maps it (addresses and offsets stay paired).
                let skew = ph.p_offset & 0xfff;
                image.segments[image.nsegments] = (
                    start - skew,
                    start.wrapping_add(ph.p_memsz),
                    ph.p_offset - skew,
                );
                image.nsegments += 1;
            }
        } else if ph.p_type == libc::PT_NOTE && image.build_id_len == 0 {
            let at = bias.wrapping_add(ph.p_vaddr) as usize;
            if at != 0 {
                // SAFETY: a PT_NOTE segment lies inside a loaded, readable segment of the
                // image, which stays mapped during the callback.
                let notes =
                    unsafe { std::slice::from_raw_parts(at as *const u8, ph.p_memsz as usize) };
                if let Some(id) = gnu_build_id(notes).filter(|id| id.len() <= BUILD_ID_MAX) {
                    image.build_id[..id.len()].copy_from_slice(id);
                    image.build_id_len = id.len();
                }
            }
        }
    }
    c.images.push(image); // within capacity: no allocation
    0
}

/// The executable segments of every image loaded in this process (the program, its shared
/// libraries, the vDSO), with file names and build IDs; read from memory, no file is opened.
/// The program itself is named by `/proc/self/exe`.
pub fn loaded() -> Vec<Mapping> {
    let mut c = Collect {
        images: Vec::with_capacity(MAX_IMAGES),
    };
    // SAFETY: `record` matches the callback type and only touches `c` through `data`.
    unsafe { libc::dl_iterate_phdr(Some(record), &mut c as *mut Collect as *mut libc::c_void) };
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, image) in c.images.iter().enumerate() {
        let name = String::from_utf8_lossy(&image.name[..image.name_len]);
        // The program is the first image and has an empty name.
        let file = if i == 0 && name.is_empty() {
            exe.clone()
        } else {
            name.into_owned()
        };
        let build_id = hex(&image.build_id[..image.build_id_len]);
        for &(start, limit, offset) in &image.segments[..image.nsegments] {
            out.push(Mapping {
                start,
                limit,
                offset,
                file: file.clone(),
                build_id: build_id.clone(),
            });
        }
    }
    out.sort_by_key(|m| m.start);
    out
}

/// The dynamic symbol whose code holds `addr`, by the loader's `dladdr1` (no allocation, no
/// file read): its raw name, if `addr` lies within the symbol's size.
pub fn symbol_at(addr: usize) -> Option<String> {
    /// `RTLD_DL_SYMENT`: `dladdr1` also returns the symbol's table entry.
    const RTLD_DL_SYMENT: libc::c_int = 1;
    // SAFETY: all-zero is a valid `Dl_info` (null pointers, zero address).
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let mut sym: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: `info` and `sym` are valid out-parameters; any address may be asked about.
    let found = unsafe {
        libc::dladdr1(
            addr as *const libc::c_void,
            &mut info,
            &mut sym as *mut *mut libc::c_void,
            RTLD_DL_SYMENT,
        )
    };
    if found == 0 || info.dli_sname.is_null() || info.dli_saddr.is_null() || sym.is_null() {
        return None;
    }
    // SAFETY: with RTLD_DL_SYMENT, `sym` points at the symbol's entry in the loaded image.
    let size = unsafe { (*(sym as *const libc::Elf64_Sym)).st_size } as usize;
    let start = info.dli_saddr as usize;
    if addr < start || addr - start >= size.max(1) {
        return None;
    }
    // SAFETY: the name is a NUL-terminated string in the loaded image's string table.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_sname) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_build_id_note_after_another_note() {
        let mut n = Vec::new();
        for (name, ty, desc) in [
            (&b"GNU\0"[..], 1u32, &[1u8, 2, 3, 4][..]),
            (&b"GNU\0"[..], 3, &[0xde, 0xad, 0xbe, 0xef, 0x01][..]),
        ] {
            n.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            n.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            n.extend_from_slice(&ty.to_ne_bytes());
            n.extend_from_slice(name);
            n.extend_from_slice(desc);
            while n.len() % 4 != 0 {
                n.push(0);
            }
        }
        assert_eq!(hex(gnu_build_id(&n).unwrap()), "deadbeef01");
        assert_eq!(gnu_build_id(&n[..20]), None);
        assert_eq!(gnu_build_id(&[0xff; 40]), None);
    }

    #[test]
    fn this_program_has_a_build_id_and_covers_its_code() {
        let maps = loaded();
        let here = this_program_has_a_build_id_and_covers_its_code as *const () as u64;
        let m = maps
            .iter()
            .find(|m| m.start <= here && here < m.limit)
            .expect("a mapping holds this function");
        assert!(m.file.starts_with('/'), "{m:?}");
        // Rust's linker invocation asks for a build ID on Linux; the test binary has one.
        assert!(m.build_id.len() >= 16, "{m:?}");
        assert!(maps.iter().any(|m| m.file.contains("libc.so")), "{maps:?}");
    }

    #[test]
    fn names_exported_functions_only_within_their_size() {
        let malloc = libc::malloc as *const () as usize;
        assert_eq!(symbol_at(malloc + 1).as_deref(), Some("malloc"));
        assert_eq!(symbol_at(0x10), None);
    }
}
