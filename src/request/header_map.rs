//! The proxy-wasm header map encoding, both ways: the request headers the host hands over in one
//! copy, and the headers of a reply or call the filter hands to the host.
//!
//! The encoding: a `u32` count, then a (name length, value length) `u32` pair per header, then
//! each name and value followed by a NUL byte; every integer little-endian.

use std::fmt;

/// Every request header, as one copy of the host's encoded map. Each single-header read costs a
/// host call plus a call back into the VM to allocate the copy; a push needs three of them, so
/// one copy of the whole (small) map is cheaper.
#[derive(Clone, Debug)]
pub struct RequestHeaders {
    data: Vec<u8>,
}

impl RequestHeaders {
    /// The map as the host encoded it (see the module documentation); anything else reads as
    /// having no header.
    pub fn from_encoded(data: Vec<u8>) -> RequestHeaders {
        RequestHeaders { data }
    }

    /// The first value of `name` (lower case, as Envoy keeps header names); a value that is not
    /// UTF-8, or a map the host encoded otherwise than documented, reads as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.raw(name)?).ok()
    }

    /// Whether the request carries `name` at all, whatever its value. A map that cannot be read
    /// counts as carrying it, so a caller that removes what it finds errs towards removing.
    pub fn contains(&self, name: &str) -> bool {
        let mut found = false;
        self.walk(|n, _| {
            found = n == name.as_bytes();
            found
        })
        .is_none()
            || found
    }

    /// [`RequestHeaders::get`] of each of `names`, in one pass over the map.
    pub fn get_each<const N: usize>(&self, names: [&str; N]) -> [Option<&str>; N] {
        let mut found = [None; N];
        let mut missing = N;
        // A map that turns out malformed after some were found keeps those: `get` finds them too.
        let _ = self.walk(|n, v| {
            for (name, slot) in names.iter().zip(found.iter_mut()) {
                if slot.is_none() && n == name.as_bytes() {
                    *slot = Some(v);
                    missing -= 1;
                }
            }
            missing == 0
        });
        found.map(|v| v.and_then(|v| std::str::from_utf8(v).ok()))
    }

    fn raw(&self, name: &str) -> Option<&[u8]> {
        let mut found = None;
        self.walk(|n, v| {
            if n == name.as_bytes() {
                found = Some(v);
            }
            found.is_some()
        })?;
        found
    }

    fn walk<'s>(&'s self, visit: impl FnMut(&'s [u8], &'s [u8]) -> bool) -> Option<()> {
        walk(&self.data, visit)
    }
}

/// Calls `visit` on each (name, value) of an encoded map until it returns true; `None` when the
/// encoding is not what proxy-wasm documents.
fn walk<'s>(d: &'s [u8], mut visit: impl FnMut(&'s [u8], &'s [u8]) -> bool) -> Option<()> {
    // Every offset is checked: a map the host encoded otherwise reads as `None`, on 32 bits too.
    let u32_at = |at: usize| -> Option<usize> {
        let b: [u8; 4] = d.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0)?;
    let mut text = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        // i < count and 8 * count fits, so these cannot overflow.
        let name_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let name_end = text.checked_add(name_len)?;
        let n = d.get(text..name_end)?;
        let value_at = name_end.checked_add(1)?;
        let value_end = value_at.checked_add(value_len)?;
        let v = d.get(value_at..value_end)?;
        if visit(n, v) {
            return Some(());
        }
        text = value_end.checked_add(1)?;
    }
    Some(())
}

/// A reply's headers, kept encoded as the host takes them: sending the reply copies nothing,
/// and a redirect's `location` is written once, into the map, from its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplyHeaders {
    data: Vec<u8>,
}

impl ReplyHeaders {
    /// One header whose value is `value_parts` one after the other.
    pub fn joined(name: &str, value_parts: &[&str]) -> ReplyHeaders {
        let value_len: usize = value_parts.iter().map(|p| p.len()).sum();
        let mut data = Vec::with_capacity(4 + 8 + name.len() + value_len + 2);
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(&(name.len() as u32).to_le_bytes());
        data.extend_from_slice(&(value_len as u32).to_le_bytes());
        data.extend_from_slice(name.as_bytes());
        data.push(0);
        for part in value_parts {
            data.extend_from_slice(part.as_bytes());
        }
        data.push(0);
        ReplyHeaders { data }
    }

    /// Adds a header after the others.
    pub fn push(&mut self, name: &str, value: &str) {
        let headers: Vec<(&str, &str)> = self.iter().chain([(name, value)]).collect();
        self.data = encode(headers.into_iter());
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut pairs = Vec::new();
        // Built here from text, so always well formed and UTF-8.
        let _ = walk(&self.data, |n, v| {
            if let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) {
                pairs.push((n, v));
            }
            false
        });
        pairs.into_iter()
    }

    /// The map in the proxy-wasm encoding.
    pub fn encoded(&self) -> &[u8] {
        &self.data
    }
}

impl fmt::Debug for ReplyHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Encodes `headers` as a proxy-wasm header map.
pub fn encode<'a>(headers: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let (count, size) = headers
        .clone()
        .fold((0u32, 4), |(c, s), (n, v)| (c + 1, s + 10 + n.len() + v.len()));
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&count.to_le_bytes());
    for (n, v) in headers.clone() {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> RequestHeaders {
        RequestHeaders::from_encoded(encode(pairs.iter().copied()))
    }

    #[test]
    fn reads_what_was_encoded() {
        let h = map(&[
            (":method", "PUT"),
            (":path", "/metrics/job/j"),
            ("x", ""),
            ("x", "second"),
        ]);
        assert_eq!(h.get(":method"), Some("PUT"));
        assert_eq!(h.get(":path"), Some("/metrics/job/j"));
        assert_eq!(h.get("x"), Some(""), "the first value wins");
        assert_eq!(h.get("y"), None);
        assert_eq!(
            h.get_each([":path", "y", "x", ":method"]),
            [Some("/metrics/job/j"), None, Some(""), Some("PUT")]
        );
        assert!(h.contains("x") && !h.contains("y"));
        let none = map(&[]);
        assert_eq!((none.get("x"), none.contains("x")), (None, false));
    }

    #[test]
    fn a_malformed_map_reads_as_absent_but_counts_as_containing() {
        let good = encode([("x-sharding-destination", "a:1")].into_iter());
        for cut in 1..good.len() - 1 {
            let h = RequestHeaders::from_encoded(good[..cut].to_vec());
            assert_eq!(h.get("x-sharding-destination"), None, "cut at {cut}");
            assert_eq!(h.get_each(["x-sharding-destination"]), [None], "cut at {cut}");
            assert!(h.contains("x-sharding-destination"), "cut at {cut}");
        }
        // Nothing at all (the host had no map), or a count no map of this size can hold.
        let h = RequestHeaders::from_encoded(Vec::new());
        assert_eq!((h.get("a"), h.contains("a")), (None, true));
        let h = RequestHeaders::from_encoded(vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!((h.get("a"), h.contains("a")), (None, true));
    }

    #[test]
    fn reply_headers_are_encoded_as_the_host_takes_them() {
        let mut h = ReplyHeaders::joined("location", &["http://", "a:1", "/metrics/job/j?x=1"]);
        assert_eq!(h.get("location"), Some("http://a:1/metrics/job/j?x=1"));
        assert_eq!(
            h.encoded(),
            encode([("location", "http://a:1/metrics/job/j?x=1")].into_iter())
        );
        h.push("retry-after", "5");
        h.push("location", "second");
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [
                ("location", "http://a:1/metrics/job/j?x=1"),
                ("retry-after", "5"),
                ("location", "second")
            ]
        );
        let read = RequestHeaders::from_encoded(h.encoded().to_vec());
        assert_eq!(read.get("retry-after"), Some("5"));
        assert_eq!(
            h.get("location"),
            Some("http://a:1/metrics/job/j?x=1"),
            "the first wins"
        );
        assert_eq!(format!("{:?}", ReplyHeaders::joined("a", &[])), r#"[("a", "")]"#);
    }

    #[test]
    fn a_value_that_is_not_utf8_reads_as_absent() {
        let mut data = encode([("a", "\u{e9}")].into_iter());
        let at = data.len() - 3;
        data[at] = 0xff;
        let h = RequestHeaders::from_encoded(data);
        assert_eq!(h.get("a"), None);
        assert!(h.contains("a"));
    }
}
