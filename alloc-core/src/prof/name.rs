//! Profile file names: `<prof_prefix>.<pid>.<seq>.<kind>.heap`, written by the engine (into a
//! fixed buffer, without allocating) and parsed by the command-line tool, the analysis and the
//! tests. The prefix may contain dots (and slashes): a name is parsed from the right.

use crate::base::config::PREFIX_MAX;

/// Dump kinds, as they appear in file names.
pub mod kind {
    /// At exit (`prof_final`).
    pub const FINAL: u8 = b'f';
    /// Every `2^lg_prof_interval` bytes allocated.
    pub const INTERVAL: u8 = b'i';
    /// At a new high-water mark of mapped memory (`prof_gdump`).
    pub const HIGH_WATER: u8 = b'u';
    /// On `prof_signal`.
    pub const SIGNAL: u8 = b's';
    /// Asked for through the API.
    pub const MANUAL: u8 = b'm';
}

/// Room for any profile name the engine writes (and its NUL): the longest prefix, a pid, a
/// sequence number, a kind and `.heap`.
pub const NAME_MAX: usize = PREFIX_MAX + 80;

/// A buffer holding one profile name.
pub type NameBuf = [u8; NAME_MAX];

const SUFFIX: &[u8] = b".heap";

/// The parts of a profile name `<prefix>.<pid>.<seq>.<kind>.heap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileName<'a> {
    /// `prof_prefix` (a path; may contain dots; may be empty in a bare file name).
    pub prefix: &'a [u8],
    /// The process that wrote the profile.
    pub pid: u32,
    /// The dump's sequence number in that process.
    pub seq: u64,
    /// The dump kind (see [`kind`]): one ASCII letter.
    pub kind: u8,
}

impl<'a> ProfileName<'a> {
    /// Writes the name into `out`; returns its length. The prefix is cut to [`PREFIX_MAX`]
    /// bytes (longer ones are refused by the configuration), so the name always fits.
    pub fn write(&self, out: &mut NameBuf) -> usize {
        let prefix = &self.prefix[..self.prefix.len().min(PREFIX_MAX)];
        let mut len = 0;
        let mut put = |b: &[u8]| {
            out[len..len + b.len()].copy_from_slice(b);
            len += b.len();
        };
        put(prefix);
        put(b".");
        put(decimal(self.pid as u64, &mut [0; 20]));
        put(b".");
        put(decimal(self.seq, &mut [0; 20]));
        put(&[b'.', self.kind]);
        put(SUFFIX);
        len
    }

    /// Parses a profile name (a bare file name, or a path whose prefix holds the directory),
    /// from the right: `.heap`, a kind letter, the sequence number and the pid, each after a
    /// dot; what is before the pid's dot is the prefix. None if `name` is not such a name.
    pub fn parse(name: &'a [u8]) -> Option<ProfileName<'a>> {
        let rest = name.strip_suffix(SUFFIX)?;
        let (&kind, rest) = rest.split_last()?;
        if !kind.is_ascii_alphabetic() {
            return None;
        }
        let rest = rest.strip_suffix(b".")?;
        let (rest, seq) = number_at_end(rest)?;
        let (prefix, pid) = number_at_end(rest)?;
        Some(ProfileName {
            prefix,
            pid: u32::try_from(pid).ok()?,
            seq,
            kind,
        })
    }
}

/// `<rest>.<digits>` → `(rest, digits)`.
fn number_at_end(s: &[u8]) -> Option<(&[u8], u64)> {
    let dot = s.iter().rposition(|&b| b == b'.')?;
    let digits = &s[dot + 1..];
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((b - b'0') as u64)?;
    }
    Some((&s[..dot], v))
}

/// `v` in decimal, in `buf`.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = buf.len();
    loop {
        n -= 1;
        buf[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[n..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(n: &ProfileName) -> Vec<u8> {
        let mut buf = [0u8; NAME_MAX];
        let len = n.write(&mut buf);
        buf[..len].to_vec()
    }

    #[test]
    fn round_trip() {
        for n in [
            ProfileName {
                prefix: b"sampalloc",
                pid: 1234,
                seq: 0,
                kind: kind::FINAL,
            },
            ProfileName {
                prefix: b"/tmp/dir/app",
                pid: u32::MAX,
                seq: u64::MAX,
                kind: kind::INTERVAL,
            },
            ProfileName {
                prefix: b"",
                pid: 0,
                seq: 7,
                kind: kind::MANUAL,
            },
        ] {
            let w = written(&n);
            assert_eq!(
                ProfileName::parse(&w),
                Some(n),
                "{:?}",
                String::from_utf8_lossy(&w)
            );
        }
        assert_eq!(
            written(&ProfileName {
                prefix: b"p",
                pid: 42,
                seq: 3,
                kind: kind::SIGNAL
            }),
            b"p.42.3.s.heap"
        );
    }

    #[test]
    fn prefixes_with_dots() {
        let n = ProfileName::parse(b"/home/me/v1.2/my.app.1234.17.m.heap").unwrap();
        assert_eq!(n.prefix, b"/home/me/v1.2/my.app");
        assert_eq!((n.pid, n.seq, n.kind), (1234, 17, b'm'));
        let n = ProfileName::parse(b"a.b.99.0.u.heap").unwrap();
        assert_eq!((n.prefix, n.pid, n.seq, n.kind), (&b"a.b"[..], 99, 0, b'u'));
    }

    #[test]
    fn the_longest_prefix_fits() {
        let prefix = [b'x'; PREFIX_MAX];
        let n = ProfileName {
            prefix: &prefix,
            pid: u32::MAX,
            seq: u64::MAX,
            kind: kind::FINAL,
        };
        let w = written(&n);
        assert!(w.len() < NAME_MAX, "room for a NUL");
        assert_eq!(ProfileName::parse(&w), Some(n));
    }

    #[test]
    fn bad_names_are_rejected() {
        for bad in [
            &b"profile.heap"[..],
            b"sampalloc.1234.0.f",
            b"sampalloc.1234.0.f.heap.gz",
            b"sampalloc.1234.0.ff.heap",
            b"sampalloc.1234.0.1.heap",
            b"sampalloc.1234.0..heap",
            b"sampalloc.1234.x.f.heap",
            b"sampalloc.12a4.0.f.heap",
            b"sampalloc.1234..f.heap",
            b"sampalloc..0.f.heap",
            b"sampalloc.-1.0.f.heap",
            b"sampalloc.+1.0.f.heap",
            b"sampalloc.4294967296.0.f.heap",
            b"sampalloc.1.18446744073709551616.f.heap",
            b"1234.0.f.heap",
            b".heap",
            b"",
        ] {
            assert_eq!(
                ProfileName::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
