//! Members (pushgateway `host:port` addresses in the ring) and the member list that the control
//! API stores and consul-sync sends.
//!
//! Owns the syntax of a member, its canonical spelling (so one pushgateway is one ring member
//! however it is written), the validation of a whole list, and what a slot resolves to. Host-free:
//! the filter and consul-sync use the same code, so they agree on what a valid list is.
//!
//! A ring member is a *slot*: its name is the configured pushgateway address, and the ring hashes
//! names only. A slot is served at its name unless the list's `slots` says otherwise: the address
//! that serves it now (its *active*) and its *standby*, which receives every write too. So a list
//! without `slots` means what it meant before slots existed, and a promotion (the standby becomes
//! the active) moves no group.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Most members one list may hold: far above any sane number of pushgateways, and it bounds the
/// ring to 10,240,000 points at the largest `vnodes`.
pub const MAX_MEMBERS: usize = 1024;

/// Largest member-list update accepted, in bytes: room for [`MAX_MEMBERS`] slots, each with an
/// active and a standby address of some 40 characters. (Tombstone acknowledgements have their
/// own, smaller limit: [`crate::tombstones::MAX_ACK_BYTES`].)
pub const MAX_UPDATE_BYTES: usize = 256 * 1024;

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

/// A validated member list: canonical members, sorted, at most [`MAX_MEMBERS`] in `members`,
/// `draining` and `absent` together, and no address twice across those and the addresses of
/// `slots`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemberList {
    pub version: u64,
    /// The ring: every group is owned by one of these slots (by name).
    pub members: Vec<Member>,
    /// Slots being drained: out of the ring (they own nothing) but still holding groups, so a
    /// `DELETE` must reach them too. Sorted, disjoint from `members`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<Member>,
    /// Pushgateways registered but not passing their health check: they may hold groups (in
    /// memory or in their persistence file) and come back with them, but no call reaches them
    /// now, so a `DELETE` leaves a tombstone for them. Sorted, disjoint from the two above and
    /// from every address serving a slot (a standby that is down stays its slot's standby).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Member>,
    /// The slots (of `members` or `draining`) not served at their name alone: each one's active
    /// and standby. A slot without an entry here is served at its name and has no standby; an entry that
    /// says just that is never kept, so equal lists are equal values. Build it with
    /// [`MemberList::with_slots`], which checks that no address serves two slots.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<Member, Slot>,
}

/// Where a slot is served: the address that takes its writes and is scraped, and the one that
/// receives every write too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub active: Member,
    pub standby: Option<Member>,
}

/// A slot resolved to its addresses ([`MemberList::placement`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement<'l> {
    /// The slot's name: what the ring hashes.
    pub slot: &'l Member,
    /// Where its writes go and where lookups point.
    pub active: &'l Member,
    /// Where every write to it goes too.
    pub standby: Option<&'l Member>,
}

impl fmt::Display for Placement<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (active {}", self.slot, self.active)?;
        match self.standby {
            Some(s) => write!(f, ", standby {s})"),
            None => f.write_str(", no standby)"),
        }
    }
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
    #[serde(default)]
    slots: WireSlots,
}

/// The `slots` object's entries in the order written, repeated keys kept (so they are refused
/// instead of one silently replacing the other).
#[derive(Default)]
struct WireSlots(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for WireSlots {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = WireSlots;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"an object {"<slot>": {"active": "host:port", "standby": "host:port" or null}, ...}"#,
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireSlots, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    if entries.len() == MAX_MEMBERS {
                        return Err(serde::de::Error::custom(format!(
                            "slots: more than {MAX_MEMBERS} entries; at most one per slot of members and draining"
                        )));
                    }
                    entries.push(entry);
                }
                Ok(WireSlots(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// One entry of `slots` on the wire.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireSlot {
    active: String,
    #[serde(default)]
    standby: Option<String>,
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
            if let Some((slot, role)) = self.serving(&member) {
                return Err(format!(
                    "{field}[{i}]: {member} is also slot {slot}'s {role} in slots; a pushgateway is in one list only"
                ));
            }
            parsed.push(member);
        }
        parsed.sort();
        Ok(parsed)
    }

    /// Every slot that may hold groups, by name: the members, then the draining ones. Its
    /// addresses are its [`MemberList::placement`].
    pub fn holders(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().chain(self.draining.iter())
    }

    /// The addresses serving `slot` (a name from `members` or `draining`; any other name is
    /// served at itself).
    pub fn placement<'l>(&'l self, slot: &'l Member) -> Placement<'l> {
        match self.slots.get(slot) {
            Some(s) => Placement {
                slot,
                active: &s.active,
                standby: s.standby.as_ref(),
            },
            None => Placement {
                slot,
                active: slot,
                standby: None,
            },
        }
    }

    /// The slot `address` serves at an address other than the slot's name, and in which role.
    fn serving(&self, address: &Member) -> Option<(&Member, &'static str)> {
        self.slots.iter().find_map(|(name, s)| match () {
            _ if name == address => None,
            _ if s.active == *address => Some((name, "active")),
            _ if s.standby.as_ref() == Some(address) => Some((name, "standby")),
            _ => None,
        })
    }

    /// Every pushgateway address in the list: each holder's active, then its standby if any.
    pub fn addresses(&self) -> impl Iterator<Item = &Member> {
        self.holders().flat_map(|slot| {
            let p = self.placement(slot);
            std::iter::once(p.active).chain(p.standby)
        })
    }

    /// The same list with `slots` set from `(name, active, standby)` entries, refusing bad
    /// addresses, a name that is not in `members` or `draining`, one slot named twice, and an
    /// address that serves two slots (or one slot twice) or is another slot's name. Entries that
    /// say a slot is served at its name with no standby are dropped: that is what no entry means.
    pub fn with_slots<'a>(
        mut self,
        entries: impl IntoIterator<Item = (&'a str, &'a str, Option<&'a str>)>,
    ) -> Result<MemberList, String> {
        let mut slots: BTreeMap<Member, (Slot, &'a str)> = BTreeMap::new();
        for (written, active, standby) in entries {
            let at = format!("slots[{written:?}]");
            let name = Member::parse(written).map_err(|e| format!("{at}: {e}"))?;
            if !self.members.contains(&name) && !self.draining.contains(&name) {
                return Err(format!(
                    "{at}: {name} is not a slot: every key of slots must be listed in members or draining"
                ));
            }
            let active = Member::parse(active).map_err(|e| format!("{at}.active: {e}"))?;
            let standby = standby
                .map(Member::parse)
                .transpose()
                .map_err(|e| format!("{at}.standby: {e}"))?;
            if let Some((_, first)) = slots.get(&name) {
                return Err(format!(
                    "{at}: names the same slot as slots[{first:?}] ({name}); each slot may have one entry"
                ));
            }
            slots.insert(name, (Slot { active, standby }, written));
        }
        self.slots = slots
            .into_iter()
            .filter(|(name, (slot, _))| slot.active != *name || slot.standby.is_some())
            .map(|(name, (slot, _))| (name, slot))
            .collect();
        self.check_addresses()?;
        Ok(self)
    }

    /// Every address serves one slot in one role, no slot is served at another's name, and no
    /// address serving a slot is also absent.
    fn check_addresses(&self) -> Result<(), String> {
        let names: BTreeSet<&Member> = self.holders().collect();
        let mut serving: BTreeMap<&Member, (&Member, &str)> = BTreeMap::new();
        for slot in self.holders() {
            let p = self.placement(slot);
            for (address, role) in
                std::iter::once((p.active, "active")).chain(p.standby.map(|s| (s, "standby")))
            {
                let at = format!("slots[{:?}].{role}", slot.as_str());
                if address != slot && names.contains(address) {
                    return Err(format!(
                        "{at}: {address} is the name of another slot (in members or draining); a slot is served at its own name or at addresses no other slot is named by"
                    ));
                }
                if self.absent.binary_search(address).is_ok() {
                    return Err(format!(
                        "{at}: {address} is also in absent; a pushgateway is in one list only (a standby that is down stays its slot's standby)"
                    ));
                }
                if let Some((other, other_role)) = serving.insert(address, (slot, role)) {
                    return Err(if other == slot {
                        format!("{at}: {address} is also the slot's {other_role}; a standby is another pushgateway")
                    } else {
                        format!(
                            "{at}: {address} already serves slot {other} as its {other_role}; each pushgateway serves one slot"
                        )
                    });
                }
            }
        }
        Ok(())
    }

    /// True when both lists name the same pushgateways in the same roles (versions aside): they
    /// place every group and every copy alike, and owe the same tombstones.
    pub fn same_members(&self, other: &MemberList) -> bool {
        self.members == other.members
            && self.draining == other.draining
            && self.absent == other.absent
            && self.slots == other.slots
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
            format!(
                r#"body is not {{"version": <unsigned integer>, "members": ["host:port", ...]}} with optional "draining": ["host:port", ...], "absent": ["host:port", ...] and "slots": {{"<slot>": {{"active": "host:port", "standby": "host:port" or null}}}}: {e}"#
            )
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
        let mut slots = Vec::with_capacity(wire.slots.0.len());
        for (name, value) in wire.slots.0 {
            let slot: WireSlot = serde_json::from_value(value).map_err(|e| {
                format!(
                    r#"slots[{name:?}]: {e}; expected {{"active": "host:port", "standby": "host:port" or null}}"#
                )
            })?;
            slots.push((name, slot));
        }
        MemberList::new(wire.version, &strings("members", &wire.members)?)?
            .with_draining(&strings("draining", &wire.draining)?)?
            .with_absent(&strings("absent", &wire.absent)?)?
            .with_slots(
                slots
                    .iter()
                    .map(|(name, s)| (name.as_str(), s.active.as_str(), s.standby.as_deref())),
            )
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

    fn placed(list: &MemberList, slot: &str) -> (String, Option<String>) {
        let slot = Member::parse(slot).unwrap_or_else(|e| unreachable!("{e}"));
        let p = list.placement(&slot);
        (p.active.to_string(), p.standby.map(Member::to_string))
    }

    #[test]
    fn a_list_without_slots_serves_every_slot_at_its_name() {
        let list =
            MemberList::from_json(br#"{"version": 1, "members": ["a:1", "b:1"], "draining": ["c:1"]}"#)
                .unwrap_or_default();
        assert!(list.slots.is_empty());
        for slot in ["a:1", "b:1", "c:1"] {
            assert_eq!(placed(&list, slot), (slot.to_owned(), None));
        }
        assert_eq!(list.addresses().count(), 3);
        // The wire form of such a list does not change: older readers take it as before.
        assert_eq!(
            list.to_json(),
            r#"{"version":1,"members":["a:1","b:1"],"draining":["c:1"]}"#
        );
    }

    #[test]
    fn slots_give_a_slot_its_active_and_standby() {
        let body = br#"{"version": 4, "members": ["A:1", "b:1", "c:1"], "draining": ["d:1"],
            "slots": {"a:1": {"active": "A2:1", "standby": "a:1"},
                      "b:1": {"active": "b:1", "standby": "[::1]:2"},
                      "c:1": {"active": "c:1", "standby": null},
                      "d:1": {"active": "d:1", "standby": "d2:1"}}}"#;
        let list = MemberList::from_json(body).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(placed(&list, "a:1"), ("a2:1".to_owned(), Some("a:1".to_owned())));
        assert_eq!(
            placed(&list, "b:1"),
            ("b:1".to_owned(), Some("[::1]:2".to_owned()))
        );
        assert_eq!(placed(&list, "d:1"), ("d:1".to_owned(), Some("d2:1".to_owned())));
        // An entry that says what no entry means is not kept.
        assert_eq!(placed(&list, "c:1"), ("c:1".to_owned(), None));
        assert!(!list.slots.contains_key(&Member("c:1".into())));
        // The ring is still the names.
        assert_eq!(
            list.members.iter().map(Member::as_str).collect::<Vec<_>>(),
            ["a:1", "b:1", "c:1"]
        );
        let addresses: Vec<&str> = list.addresses().map(Member::as_str).collect();
        assert_eq!(addresses, ["a2:1", "a:1", "b:1", "[::1]:2", "c:1", "d:1", "d2:1"]);
        assert_eq!(MemberList::from_json(list.to_json().as_bytes()), Ok(list.clone()));
        assert!(list
            .to_json()
            .contains(r#""a:1":{"active":"a2:1","standby":"a:1"}"#));
        // A missing standby is no standby.
        let l = MemberList::from_json(
            br#"{"version": 1, "members": ["a:1"], "slots": {"a:1": {"active": "z:1"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(placed(&l, "a:1"), ("z:1".to_owned(), None));
        assert!(l.to_json().contains(r#""a:1":{"active":"z:1","standby":null}"#));
    }

    #[test]
    fn bad_slots_are_refused_naming_the_entry() {
        let with = |slots: &str| {
            format!(r#"{{"version": 1, "members": ["a:1", "b:1"], "draining": ["c:1"], "slots": {slots}}}"#)
        };
        for (slots, reason) in [
            (
                r#"{"x:1": {"active": "x:1"}}"#,
                r#"slots["x:1"]: x:1 is not a slot: every key of slots must be listed in members or draining"#,
            ),
            (
                r#"{"nope": {"active": "a:1"}}"#,
                r#"slots["nope"]: "nope" is not a valid member"#,
            ),
            (
                r#"{"a:1": {"active": "a"}}"#,
                r#"slots["a:1"].active: "a" is not a valid member: missing :port"#,
            ),
            (
                r#"{"a:1": {"active": "a:1", "standby": "http://s:1"}}"#,
                r#"slots["a:1"].standby: "http://s:1" is not a valid member"#,
            ),
            (
                r#"{"a:1": {"active": 5}}"#,
                r#"slots["a:1"]: invalid type: integer `5`, expected a string"#,
            ),
            (
                r#"{"a:1": {"standby": "s:1"}}"#,
                r#"slots["a:1"]: missing field `active`"#,
            ),
            (
                r#"{"a:1": {"active": "a:1", "spare": "s:1"}}"#,
                r#"slots["a:1"]: unknown field `spare`"#,
            ),
            (r#"{"a:1": "s:1"}"#, r#"slots["a:1"]: invalid type: string"#),
            (r#"[]"#, r#"expected an object {"<slot>""#),
            (
                r#"{"a:1": {"active": "s:1"}, "A:1": {"active": "t:1"}}"#,
                r#"slots["A:1"]: names the same slot as slots["a:1"] (a:1)"#,
            ),
            (
                r#"{"a:1": {"active": "s:1"}, "a:1": {"active": "s:1"}}"#,
                r#"slots["a:1"]: names the same slot as slots["a:1"]"#,
            ),
            (
                r#"{"a:1": {"active": "a:1", "standby": "A:1"}}"#,
                r#"slots["a:1"].standby: a:1 is also the slot's active; a standby is another pushgateway"#,
            ),
            (
                r#"{"a:1": {"active": "a:1", "standby": "s:1"}, "b:1": {"active": "b:1", "standby": "s:1"}}"#,
                r#"slots["b:1"].standby: s:1 already serves slot a:1 as its standby; each pushgateway serves one slot"#,
            ),
            (
                r#"{"a:1": {"active": "s:1"}, "c:1": {"active": "c:1", "standby": "s:1"}}"#,
                r#"slots["c:1"].standby: s:1 already serves slot a:1 as its active"#,
            ),
            (
                r#"{"a:1": {"active": "a:1", "standby": "b:1"}}"#,
                r#"slots["a:1"].standby: b:1 is the name of another slot"#,
            ),
            (
                r#"{"b:1": {"active": "c:1"}}"#,
                r#"slots["b:1"].active: c:1 is the name of another slot"#,
            ),
        ] {
            let body = with(slots);
            let err = MemberList::from_json(body.as_bytes()).err().unwrap_or_default();
            assert!(err.contains(reason), "{slots}: {err}");
        }
        let too_many: String = (0..=MAX_MEMBERS)
            .map(|i| format!(r#""h{i}:1": {{"active": "h{i}:1"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let err = MemberList::from_json(with(&format!("{{{too_many}}}")).as_bytes())
            .err()
            .unwrap_or_default();
        assert!(err.contains("slots: more than 1024 entries"), "{err}");
    }

    #[test]
    fn same_members_ignores_only_the_version() {
        let a = MemberList::new(1, &["a:1"]).unwrap_or_default();
        let b = MemberList::new(2, &["a:1"]).unwrap_or_default();
        assert!(a.same_members(&b));
        let c = b
            .clone()
            .with_slots([("a:1", "a:1", Some("s:1"))])
            .unwrap_or_default();
        assert!(!c.same_members(&b));
        let d = b.clone().with_draining(&["d:1"]).unwrap_or_default();
        assert!(!d.same_members(&b));
        // Spelled without the default entry or with it: the same list.
        let e = b.clone().with_slots([("a:1", "A:1", None)]).unwrap_or_default();
        assert_eq!(e, b);
    }

    #[test]
    fn placement_reads_as_a_log_line() {
        let list = MemberList::new(1, &["a:1", "b:1"])
            .and_then(|l| l.with_slots([("a:1", "s:1", Some("a:1"))]))
            .unwrap_or_default();
        let name = |s: &str| Member(s.to_owned());
        let (a, b) = (name("a:1"), name("b:1"));
        assert_eq!(list.placement(&a).to_string(), "a:1 (active s:1, standby a:1)");
        assert_eq!(list.placement(&b).to_string(), "b:1 (active b:1, no standby)");
    }

    #[test]
    fn a_full_list_of_slots_with_standbys_fits_in_one_update() {
        let names: Vec<String> = (0..MAX_MEMBERS)
            .map(|i| format!("pushgateway-{i:04}.metrics.example.com:9091"))
            .collect();
        let standbys: Vec<String> = (0..MAX_MEMBERS)
            .map(|i| format!("pushgateway-{i:04}-standby.metrics.example.com:9091"))
            .collect();
        let list = MemberList::new(1, &names)
            .and_then(|l| {
                l.with_slots(
                    names
                        .iter()
                        .zip(&standbys)
                        .map(|(n, s)| (n.as_str(), n.as_str(), Some(s.as_str()))),
                )
            })
            .unwrap_or_default();
        let json = list.to_json();
        assert!(json.len() <= MAX_UPDATE_BYTES, "{} bytes", json.len());
        assert_eq!(MemberList::from_json(json.as_bytes()), Ok(list));
    }

    #[test]
    fn absent_and_slot_addresses_are_checked_together() {
        // One body: absent checked against the slots whichever is read first.
        let with = |absent: &str, slots: &str| {
            format!(
                r#"{{"version": 1, "members": ["a:1", "b:1"], "draining": ["c:1"], "absent": {absent}, "slots": {slots}}}"#
            )
        };
        for (absent, slots, reason) in [
            (
                r#"["s:1"]"#,
                r#"{"a:1": {"active": "a:1", "standby": "s:1"}}"#,
                r#"slots["a:1"].standby: s:1 is also in absent; a pushgateway is in one list only"#,
            ),
            (
                r#"["S:1"]"#,
                r#"{"c:1": {"active": "s:1"}}"#,
                r#"slots["c:1"].active: s:1 is also in absent"#,
            ),
            (
                r#"["a:1"]"#,
                r#"{"a:1": {"active": "z:1", "standby": "a:1"}}"#,
                "absent[0]: a:1 is also in members",
            ),
        ] {
            let body = with(absent, slots);
            let err = MemberList::from_json(body.as_bytes()).err().unwrap_or_default();
            assert!(err.contains(reason), "{absent} {slots}: {err}");
        }
        // Built in the other order: the absent list is checked against the slots.
        let err = MemberList::new(1, &["a:1"])
            .and_then(|l| l.with_slots([("a:1", "z:1", Some("a:1"))]))
            .and_then(|l| l.with_absent(&["z:1"]))
            .err()
            .unwrap_or_default();
        assert!(
            err.contains("absent[0]: z:1 is also slot a:1's active in slots"),
            "{err}"
        );
        // Apart, they go together.
        let list = MemberList::from_json(
            with(r#"["d:1"]"#, r#"{"a:1": {"active": "a:1", "standby": "s:1"}}"#).as_bytes(),
        )
        .unwrap_or_default();
        assert_eq!(list.absent, [Member("d:1".into())]);
        assert_eq!(placed(&list, "a:1"), ("a:1".to_owned(), Some("s:1".to_owned())));
        assert_eq!(MemberList::from_json(list.to_json().as_bytes()), Ok(list.clone()));
        assert!(!list.same_members(&MemberList {
            absent: vec![],
            ..list.clone()
        }));
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
            .contains(&format!("at most {MAX_UPDATE_BYTES}")));
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
