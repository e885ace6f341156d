//! Members (pushgateway `host:port` addresses in the ring) and the member list that the control
//! API stores and consul-sync sends.
//!
//! Owns the syntax of a member, its canonical spelling (so one pushgateway is one ring member
//! however it is written), and the validation of a whole list. Host-free: the filter and
//! consul-sync use the same code, so they agree on what a valid list is.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most members one list may hold: far above any sane number of pushgateways, and it bounds the
/// ring to 10,240,000 points at the largest `vnodes`.
pub const MAX_MEMBERS: usize = 1024;

/// Largest control-API body accepted, in bytes.
pub const MAX_UPDATE_BYTES: usize = 64 * 1024;

const ACCEPTED: &str =
    "expected host:port with a DNS name, an IPv4 address or [IPv6], and a port from 1 to 65535";

/// One pushgateway, in canonical spelling: lower-case name, or the standard form of an IP address,
/// then `:port`. IPv6 addresses are bracketed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Member(String);

impl Member {
    /// Parses and canonicalises `host:port`.
    pub fn parse(input: &str) -> Result<Member, String> {
        let bad = |why: &str| format!("{input:?} is not a valid member: {why}; {ACCEPTED}");
        if input.contains("://") || input.contains('/') {
            return Err(bad(
                "a member is an address, not a URL: leave out the scheme and path",
            ));
        }
        let (host, port) = if let Some(rest) = input.strip_prefix('[') {
            let (addr, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| bad("missing :port after ']'"))?;
            let ip: Ipv6Addr = addr
                .parse()
                .map_err(|_| bad("not an IPv6 address between [ and ]"))?;
            (format!("[{ip}]"), port)
        } else {
            let (host, port) = input.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
            if host.contains(':') {
                return Err(bad("IPv6 addresses must be written in brackets"));
            }
            (canonical_host(host).map_err(|why| bad(&why))?, port)
        };
        let port =
            parse_port(port).ok_or_else(|| bad(&format!("port {port:?} is not a number from 1 to 65535")))?;
        Ok(Member(format!("{host}:{port}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part, brackets kept for IPv6 (as it stands in a URL).
    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map(|(h, _)| h).unwrap_or(&self.0)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Member::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_port(s: &str) -> Option<u16> {
    // Digits only: Rust's parser takes a leading '+', which no URL would.
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

fn canonical_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if host.len() > 253 {
        return Err("host name longer than 253 characters".to_owned());
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "{host:?} is not a host name (labels of letters, digits, '-', '_', at most 63 each)"
            ));
        }
    }
    // An all-digit last label is a mistyped IPv4 address (`10.0.0.256`), not a name.
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{host:?} is neither an IPv4 address nor a host name"));
    }
    Ok(host.to_ascii_lowercase())
}

/// A validated member list: canonical members, sorted, no duplicates, at most [`MAX_MEMBERS`]
/// in `members` and `draining` together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemberList {
    pub version: u64,
    /// The ring: every group is owned by one of these.
    pub members: Vec<Member>,
    /// Pushgateways being drained: out of the ring (they own nothing) but still holding groups,
    /// so a `DELETE` must reach them too. Sorted, disjoint from `members`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<Member>,
    /// Pushgateways registered but not passing their health check: they may hold groups (in
    /// memory or in their persistence file) and come back with them, but no call reaches them
    /// now, so a `DELETE` leaves a tombstone for them. Sorted, disjoint from the two above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Member>,
}

/// The control API's wire form, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireList {
    version: u64,
    members: Vec<serde_json::Value>,
    #[serde(default)]
    draining: Vec<serde_json::Value>,
    #[serde(default)]
    absent: Vec<serde_json::Value>,
}

impl MemberList {
    /// Builds a list from member strings, refusing bad or duplicate entries.
    pub fn new<S: AsRef<str>>(version: u64, members: &[S]) -> Result<MemberList, String> {
        if members.len() > MAX_MEMBERS {
            return Err(format!(
                "{} members given; at most {MAX_MEMBERS} are accepted",
                members.len()
            ));
        }
        let mut parsed: Vec<Member> = Vec::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            let member = Member::parse(m.as_ref()).map_err(|e| format!("members[{i}]: {e}"))?;
            if let Some(j) = parsed.iter().position(|p| *p == member) {
                return Err(format!(
                    "members[{i}]: {:?} duplicates members[{j}] ({member}); each pushgateway may appear once",
                    m.as_ref()
                ));
            }
            parsed.push(member);
        }
        parsed.sort();
        Ok(MemberList {
            version,
            members: parsed,
            ..MemberList::default()
        })
    }

    /// The same list with `draining` set, refusing bad entries, duplicates, entries that are
    /// also ring members, and more than [`MAX_MEMBERS`] in all.
    pub fn with_draining<S: AsRef<str>>(mut self, draining: &[S]) -> Result<MemberList, String> {
        self.draining = self.beside("draining", draining)?;
        Ok(self)
    }

    /// The same list with `absent` set, refusing what [`MemberList::with_draining`] refuses and
    /// entries that are also draining.
    pub fn with_absent<S: AsRef<str>>(mut self, absent: &[S]) -> Result<MemberList, String> {
        self.absent = self.beside("absent", absent)?;
        Ok(self)
    }

    /// Parses a list that travels beside the ring (`field` names it in errors): canonical,
    /// sorted, each once, none also in another list, at most [`MAX_MEMBERS`] in all.
    fn beside<S: AsRef<str>>(&self, field: &str, entries: &[S]) -> Result<Vec<Member>, String> {
        let count = |name: &str, list: &[Member]| if name == field { entries.len() } else { list.len() };
        let (draining, absent) = (count("draining", &self.draining), count("absent", &self.absent));
        if self.members.len() + draining + absent > MAX_MEMBERS {
            return Err(format!(
                "{} members, {draining} draining and {absent} absent given; at most {MAX_MEMBERS} in all are accepted",
                self.members.len(),
            ));
        }
        let mut parsed: Vec<Member> = Vec::with_capacity(entries.len());
        for (i, m) in entries.iter().enumerate() {
            let member = Member::parse(m.as_ref()).map_err(|e| format!("{field}[{i}]: {e}"))?;
            if parsed.contains(&member) {
                return Err(format!(
                    "{field}[{i}]: {member} is listed twice; each pushgateway may appear once"
                ));
            }
            if self.members.contains(&member) {
                return Err(format!(
                    "{field}[{i}]: {member} is also in members; a {field} pushgateway is out of the ring"
                ));
            }
            for (other, list) in [("draining", &self.draining), ("absent", &self.absent)] {
                if other != field && list.contains(&member) {
                    return Err(format!(
                        "{field}[{i}]: {member} is also in {other}; a pushgateway is in one list only"
                    ));
                }
            }
            parsed.push(member);
        }
        parsed.sort();
        Ok(parsed)
    }

    /// Every pushgateway that may hold groups: the members, then the draining ones.
    pub fn holders(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().chain(self.draining.iter())
    }

    /// Decodes and validates a control-API body `{"version": <u64>, "members": ["host:port", ...]}`.
    pub fn from_json(body: &[u8]) -> Result<MemberList, String> {
        if body.len() > MAX_UPDATE_BYTES {
            return Err(format!(
                "body is {} bytes; at most {MAX_UPDATE_BYTES} are accepted",
                body.len()
            ));
        }
        let wire: WireList = serde_json::from_slice(body).map_err(|e| {
            format!(r#"body is not {{"version": <unsigned integer>, "members": ["host:port", ...]}}: {e}"#)
        })?;
        let strings = |field: &str, values: &[serde_json::Value]| -> Result<Vec<String>, String> {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v.as_str() {
                    Some(s) => Ok(s.to_owned()),
                    None => Err(format!("{field}[{i}]: {v} is not a string; {ACCEPTED}")),
                })
                .collect()
        };
        MemberList::new(wire.version, &strings("members", &wire.members)?)?
            .with_draining(&strings("draining", &wire.draining)?)?
            .with_absent(&strings("absent", &wire.absent)?)
    }

    /// True when both lists name the same pushgateways in the same roles (versions aside).
    pub fn same_members(&self, other: &MemberList) -> bool {
        self.members == other.members && self.draining == other.draining && self.absent == other.absent
    }

    /// The JSON that [`MemberList::from_json`] reads back.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }
}

/// What changed between two member lists, for logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberDiff {
    pub added: Vec<Member>,
    pub removed: Vec<Member>,
}

impl MemberDiff {
    pub fn between(old: &[Member], new: &[Member]) -> MemberDiff {
        MemberDiff {
            added: new.iter().filter(|m| !old.contains(m)).cloned().collect(),
            removed: old.iter().filter(|m| !new.contains(m)).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl fmt::Display for MemberDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[Member]| v.iter().map(Member::as_str).collect::<Vec<_>>().join(",");
        write!(
            f,
            "added [{}] removed [{}]",
            join(&self.added),
            join(&self.removed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        match Member::parse(s) {
            Ok(m) => m.to_string(),
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn members_are_canonicalised() {
        assert_eq!(ok("127.0.0.1:9091"), "127.0.0.1:9091");
        assert_eq!(ok("PushGW-1.Example.com:9091"), "pushgw-1.example.com:9091");
        assert_eq!(ok("[::1]:9091"), "[::1]:9091");
        assert_eq!(ok("[2001:DB8:0:0::1]:80"), "[2001:db8::1]:80");
        assert_eq!(ok("localhost:65535"), "localhost:65535");
        let m = Member::parse("[::1]:9091").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((m.host(), m.port()), ("[::1]", 9091));
    }

    #[test]
    fn bad_members_are_refused_with_the_reason() {
        for (input, reason) in [
            ("127.0.0.1", "missing :port"),
            ("127.0.0.1:0", "port \"0\""),
            ("127.0.0.1:65536", "port \"65536\""),
            ("127.0.0.1:+80", "port \"+80\""),
            (":9091", "empty host"),
            ("::1:9091", "brackets"),
            ("[::1]9091", "missing :port"),
            ("[zz]:1", "not an IPv6"),
            ("10.0.0.256:1", "neither an IPv4"),
            ("-a.b:1", "not a host name"),
            ("a b:1", "not a host name"),
            ("http://a:1", "not a URL"),
            ("a:1/x", "not a URL"),
        ] {
            match Member::parse(input) {
                Err(e) => assert!(e.contains(reason) && e.contains(ACCEPTED), "{input}: {e}"),
                Ok(m) => unreachable!("{input} accepted as {m}"),
            }
        }
    }

    #[test]
    fn list_is_sorted_and_deduplicated_by_canonical_form() {
        let list = MemberList::new(3, &["b:2", "a:1"]).unwrap_or_default();
        assert_eq!(list.members, vec![Member("a:1".into()), Member("b:2".into())]);
        let err = MemberList::new(1, &["A:1", "a:1"]).err().unwrap_or_default();
        assert!(
            err.contains("members[1]") && err.contains("duplicates members[0]"),
            "{err}"
        );
    }

    #[test]
    fn json_round_trip_and_refusals() {
        let list =
            MemberList::from_json(br#"{"version": 7, "members": ["h:1", "[::1]:2"]}"#).unwrap_or_default();
        assert_eq!(list.version, 7);
        assert_eq!(MemberList::from_json(list.to_json().as_bytes()), Ok(list));
        for (body, reason) in [
            (&br#"{"version": 1}"#[..], "missing field `members`"),
            (br#"{"version": -1, "members": []}"#, "version"),
            (
                br#"{"version": 1, "members": [], "extra": 1}"#,
                "unknown field `extra`",
            ),
            (
                br#"{"version": 1, "members": [5]}"#,
                "members[0]: 5 is not a string",
            ),
            (br#"{"version": 1, "members": ["ok:1", "bad"]}"#, "members[1]"),
            (b"not json", "body is not"),
        ] {
            let err = MemberList::from_json(body).err().unwrap_or_default();
            assert!(err.contains(reason), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn draining_members_travel_beside_the_ring() {
        let list =
            MemberList::from_json(br#"{"version": 2, "members": ["b:1"], "draining": ["c:1", "a:1"]}"#)
                .unwrap_or_default();
        assert_eq!(list.draining, vec![Member("a:1".into()), Member("c:1".into())]);
        assert_eq!(list.holders().count(), 3);
        assert_eq!(MemberList::from_json(list.to_json().as_bytes()), Ok(list));
        // No draining field on the wire when nobody drains: older readers see the old body.
        let plain = MemberList::new(1, &["a:1"]).unwrap_or_default();
        assert_eq!(plain.to_json(), r#"{"version":1,"members":["a:1"]}"#);
        for (body, reason) in [
            (
                &br#"{"version": 1, "members": ["a:1"], "draining": ["a:1"]}"#[..],
                "also in members",
            ),
            (
                br#"{"version": 1, "members": [], "draining": ["c:1", "C:1"]}"#,
                "listed twice",
            ),
            (
                br#"{"version": 1, "members": [], "draining": [3]}"#,
                "draining[0]: 3 is not a string",
            ),
            (
                br#"{"version": 1, "members": [], "draining": ["x"]}"#,
                "draining[0]",
            ),
        ] {
            let err = MemberList::from_json(body).err().unwrap_or_default();
            assert!(err.contains(reason), "{}: {err}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn absent_pushgateways_travel_beside_the_ring_too() {
        let list = MemberList::from_json(
            br#"{"version": 2, "members": ["b:1"], "draining": ["c:1"], "absent": ["e:1", "D:1"]}"#,
        )
        .unwrap_or_default();
        assert_eq!(list.absent, vec![Member("d:1".into()), Member("e:1".into())]);
        assert_eq!(list.holders().count(), 2, "no call can reach an absent one");
        assert_eq!(MemberList::from_json(list.to_json().as_bytes()), Ok(list.clone()));
        assert!(!list.same_members(&MemberList {
            absent: vec![],
            ..list.clone()
        }));
        for (body, reason) in [
            (
                &br#"{"version": 1, "members": ["a:1"], "absent": ["a:1"]}"#[..],
                "absent[0]: a:1 is also in members",
            ),
            (
                br#"{"version": 1, "members": [], "draining": ["c:1"], "absent": ["c:1"]}"#,
                "absent[0]: c:1 is also in draining",
            ),
            (
                br#"{"version": 1, "members": [], "absent": ["c:1", "C:1"]}"#,
                "absent[1]: c:1 is listed twice",
            ),
            (
                br#"{"version": 1, "members": [], "absent": [true]}"#,
                "absent[0]: true is not a string",
            ),
        ] {
            let err = MemberList::from_json(body).err().unwrap_or_default();
            assert!(err.contains(reason), "{}: {err}", String::from_utf8_lossy(body));
        }
        let many: Vec<String> = (0..MAX_MEMBERS).map(|i| format!("h{i}:1")).collect();
        let err = MemberList::new(1, &many[..1000])
            .and_then(|l| l.with_draining(&many[1000..1020]))
            .and_then(|l| l.with_absent(&many[1020..]))
            .map(|l| l.with_absent(&["x:1"; 5]));
        assert!(err.is_ok_and(|e| e
            .err()
            .unwrap_or_default()
            .contains("1000 members, 20 draining and 5 absent given; at most 1024")));
    }

    #[test]
    fn size_limits() {
        let many: Vec<String> = (0..=MAX_MEMBERS).map(|i| format!("h{i}:1")).collect();
        let err = MemberList::new(1, &many).err().unwrap_or_default();
        assert!(err.contains("at most 1024"), "{err}");
        assert!(MemberList::new(1, &many[..MAX_MEMBERS]).is_ok());
        let big = vec![b' '; MAX_UPDATE_BYTES + 1];
        assert!(MemberList::from_json(&big)
            .err()
            .unwrap_or_default()
            .contains("at most 65536"));
    }

    #[test]
    fn diff_names_added_and_removed() {
        let a = MemberList::new(1, &["a:1", "b:1"]).unwrap_or_default();
        let b = MemberList::new(2, &["b:1", "c:1"]).unwrap_or_default();
        let d = MemberDiff::between(&a.members, &b.members);
        assert_eq!(d.to_string(), "added [c:1] removed [a:1]");
        assert!(MemberDiff::between(&a.members, &a.members).is_empty());
    }
}
