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
//!
//! The header also holds the sample's stand-in: a block of the sampled block's own class,
//! taken from the thread cache when the sample was, and freed with it (see `api::sampled`).

use super::segment::SampleRecord;
use core::ptr;

/// Bytes of the header before a sampled block served inside a larger one: the least offset of
/// such a block into its larger block.
pub const HEADER: usize = 48;

/// What a header holds besides its seal.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct InnerSample {
    /// A block of the sampled block's class, held while it lives (null: none).
    pub stand_in: *mut u8,
    /// The profiler's record of the sample, just below the block.
    pub record: SampleRecord,
}

/// The header: the seal, then what it seals.
#[repr(C)]
struct Header {
    seal: u64,
    _pad: u64,
    sample: InnerSample,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER);

/// The key mixed into every seal: where this static lies differs from process to process.
static KEY: u8 = 0;

/// The seal of the header of block `p` holding `sample`; never 0.
fn seal(p: usize, sample: &InnerSample) -> u64 {
    let key = ptr::addr_of!(KEY) as u64;
    let record = &sample.record;
    let mut x = (p as u64 ^ key.rotate_left(32))
        .wrapping_add(record.stack as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (record.bytes as u64).rotate_left(23)
        ^ record.weight.to_bits()
        ^ (sample.stand_in as u64).rotate_left(41);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) | 1
}

/// The header below `p`.
fn header(p: *mut u8) -> *mut Header {
    p.wrapping_sub(HEADER).cast()
}

/// Writes the header of the sampled block `p` with `sample`.
///
/// # Safety
/// `p` must lie at least [`HEADER`] bytes into a live block that the caller owns and has not
/// handed out, aligned to 16.
pub unsafe fn write(p: *mut u8, sample: InnerSample) {
    // SAFETY: per the contract, the header's bytes are the caller's, 16-aligned.
    unsafe {
        header(p).write(Header {
            seal: seal(p as usize, &sample),
            _pad: 0,
            sample,
        })
    }
}

/// What the header below `p` holds, if it is valid.
///
/// # Safety
/// `p` must lie at least [`HEADER`] bytes into a live block of ours, aligned to 16.
pub unsafe fn sample_of(p: *mut u8) -> Option<InnerSample> {
    // SAFETY: per the contract, the header's bytes are readable.
    let h = unsafe { header(p).read() };
    (h.seal == seal(p as usize, &h.sample)).then_some(h.sample)
}

/// If `p` is a sampled block with a valid header, breaks the seal (so that a second `free`
/// finds none) and returns what it held.
///
/// # Safety
/// As for [`sample_of`]; the block is being freed by the caller.
pub unsafe fn take(p: *mut u8) -> Option<InnerSample> {
    // SAFETY: per the contract.
    let sample = unsafe { sample_of(p) }?;
    // SAFETY: as above; the block is the caller's to free.
    unsafe { ptr::addr_of_mut!((*header(p)).seal).write(0) };
    Some(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_found_once_and_only_where_it_was_written() {
        let mut block = [0u128; 8];
        let base = block.as_mut_ptr().cast::<u8>();
        let record = InnerSample {
            stand_in: 0x7f00_0000_1230 as *mut u8,
            record: SampleRecord {
                stack: 0x1234_5678 as *mut (),
                bytes: 200,
                weight: 2621.5,
            },
        };
        // SAFETY: every pointer below lies at least HEADER bytes into `block`, 16-aligned.
        unsafe {
            let p = base.add(HEADER);
            assert_eq!(sample_of(p), None, "a zeroed header is valid");
            write(p, record);
            assert_eq!(sample_of(p), Some(record));
            assert_eq!(sample_of(p.add(16)), None, "found 16 bytes further");
            // A byte of the record overwritten (a write below the program's block).
            *p.sub(1) ^= 1;
            assert_eq!(sample_of(p), None, "a changed record kept its seal");
            *p.sub(1) ^= 1;
            // The stand-in's pointer changed.
            *p.sub(32) ^= 0x10;
            assert_eq!(sample_of(p), None, "a changed stand-in kept its seal");
            *p.sub(32) ^= 0x10;
            assert_eq!(take(p), Some(record));
            assert_eq!(take(p), None, "taken twice");
            assert_eq!(sample_of(p), None);
        }
    }
}
