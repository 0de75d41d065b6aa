//! Sampled blocks served inside a larger block: the header each keeps in the bytes before it.
//!
//! A sampled block of a cached class is placed at least [`HEADER`] bytes into a block of a
//! larger class (see `api::sampled`), so the address the program holds starts no block of its
//! span, and its `free` fails the fast path's block-start check and reaches the checked path.
//! There, before calling the pointer invalid, `free` reads the header just below it: the
//! sample's record, and a seal, a keyed hash of the block's address and the record. A pointer
//! into the middle of some block, a block freed already (its `free` cleared the seal), or a
//! header the program overwrote has no valid seal and stays invalid.
//!
//! Nothing here is shared: the header lies in the block's own lines, so a sample and its free
//! write no line that another thread's `free` reads. (Marking the page's fast-path code wrote
//! a line of 64 pages' codes, twice a sample; a table of records by address wrote its shard's
//! lock and slots, which both threads used.)

use super::segment::SampleRecord;
use core::ptr;

/// Bytes of the header before a sampled block served inside a larger one: the least offset of
/// such a block into its larger block.
pub const HEADER: usize = 32;

/// The header: the seal, then the record.
#[repr(C)]
struct Header {
    seal: u64,
    record: SampleRecord,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER);

/// The key mixed into every seal: where this static lies differs from process to process.
static KEY: u8 = 0;

/// The seal of the header of block `p` holding `record`; never 0.
fn seal(p: usize, record: &SampleRecord) -> u64 {
    let key = ptr::addr_of!(KEY) as u64;
    let mut x = (p as u64 ^ key.rotate_left(32))
        .wrapping_add(record.stack as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (record.bytes as u64).rotate_left(23)
        ^ record.weight.to_bits();
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) | 1
}

/// The header below `p`.
fn header(p: *mut u8) -> *mut Header {
    p.wrapping_sub(HEADER).cast()
}

/// Writes the header of the sampled block `p` with `record`.
///
/// # Safety
/// `p` must lie at least [`HEADER`] bytes into a live block that the caller owns and has not
/// handed out, aligned to 16.
pub unsafe fn write(p: *mut u8, record: SampleRecord) {
    // SAFETY: per the contract, the header's bytes are the caller's, 16-aligned.
    unsafe {
        header(p).write(Header {
            seal: seal(p as usize, &record),
            record,
        })
    }
}

/// The record of `p`, if a valid header lies below it.
///
/// # Safety
/// `p` must lie at least [`HEADER`] bytes into a live block of ours, aligned to 16.
pub unsafe fn record_of(p: *mut u8) -> Option<SampleRecord> {
    // SAFETY: per the contract, the header's bytes are readable.
    let h = unsafe { header(p).read() };
    (h.seal == seal(p as usize, &h.record)).then_some(h.record)
}

/// If `p` is a sampled block with a valid header, breaks the seal (so that a second `free`
/// finds none) and returns the record.
///
/// # Safety
/// As for [`record_of`]; the block is being freed by the caller.
pub unsafe fn take(p: *mut u8) -> Option<SampleRecord> {
    // SAFETY: per the contract.
    let record = unsafe { record_of(p) }?;
    // SAFETY: as above; the block is the caller's to free.
    unsafe { ptr::addr_of_mut!((*header(p)).seal).write(0) };
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_found_once_and_only_where_it_was_written() {
        let mut block = [0u128; 8];
        let base = block.as_mut_ptr().cast::<u8>();
        let record = SampleRecord {
            stack: 0x1234_5678 as *mut (),
            bytes: 200,
            weight: 2621.5,
        };
        // SAFETY: every pointer below lies at least HEADER bytes into `block`, 16-aligned.
        unsafe {
            let p = base.add(HEADER);
            assert_eq!(record_of(p), None, "a zeroed header is valid");
            write(p, record);
            assert_eq!(record_of(p), Some(record));
            assert_eq!(record_of(p.add(16)), None, "found 16 bytes further");
            // A byte of the record overwritten (a write below the program's block).
            *p.sub(1) ^= 1;
            assert_eq!(record_of(p), None, "a changed record kept its seal");
            *p.sub(1) ^= 1;
            assert_eq!(take(p), Some(record));
            assert_eq!(take(p), None, "taken twice");
            assert_eq!(record_of(p), None);
        }
    }
}
