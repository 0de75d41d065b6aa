//! Parsing the lines of `/proc/self/smaps` (read with [`super::os::for_each_line`]): a
//! mapping's header line and its `Key:   123 kB` fields. No allocation.

/// The value of a `Key:   123 kB` line in bytes, if the line is for `key`.
pub fn field(line: &[u8], key: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(key)?.strip_prefix(b":")?;
    let mut v: u64 = 0;
    let mut digits = false;
    for &b in rest.iter().skip_while(|b| **b == b' ' || **b == b'\t') {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.saturating_mul(10).saturating_add((b - b'0') as u64);
        digits = true;
    }
    digits.then_some(v.saturating_mul(1024))
}

fn hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0usize;
    for &b in s {
        v = (v << 4) | (b as char).to_digit(16)? as usize;
    }
    Some(v)
}

/// A mapping's header line: `start-end perms offset dev inode [name]`.
pub struct Header<'a> {
    /// First address.
    pub start: usize,
    /// One past the last address.
    pub end: usize,
    /// `rw-p` and the like.
    pub perms: &'a [u8],
    /// The path or `[name]`, empty for anonymous memory.
    pub name: &'a [u8],
}

pub fn header(line: &[u8]) -> Option<Header<'_>> {
    let mut fields = line.splitn(6, |b| *b == b' ');
    let range = fields.next()?;
    let dash = range.iter().position(|b| *b == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    let perms = fields.next()?;
    let (_offset, _dev, _inode) = (fields.next()?, fields.next()?, fields.next()?);
    let name = fields.next().unwrap_or(b"");
    let skip = name.iter().take_while(|b| **b == b' ').count();
    Some(Header {
        start,
        end,
        perms,
        name: &name[skip..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_lines_parse() {
        let h = header(b"7f12a0000000-7f12a0400000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!((h.start, h.end), (0x7f12_a000_0000, 0x7f12_a040_0000));
        let h = header(b"55d0-55e0 r--p 0 08:01 1 /bin/x").unwrap();
        assert_eq!((h.start, h.end, h.name), (0x55d0, 0x55e0, &b"/bin/x"[..]));
        assert!(header(b"Size:  4 kB").is_none());
        assert!(header(b"ab-").is_none());
        assert_eq!(
            field(b"AnonHugePages:      2048 kB", b"AnonHugePages"),
            Some(2048 << 10)
        );
        assert_eq!(field(b"AnonHugePages: 0 kB", b"AnonHugePages"), Some(0));
        assert_eq!(field(b"Rss: 4 kB", b"AnonHugePages"), None);
    }
}
