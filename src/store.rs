//! The member list in shared storage, and each worker's cached view of it.
//!
//! Envoy's shared data is one key-value map per `vm_id`, visible to every worker. The list lives
//! under [`MEMBERS_KEY`]; [`GENERATION_KEY`] holds an 8-byte counter raised after every accepted
//! update. A worker reads only the small counter per request and re-reads the list (and rebuilds
//! its ring) when the counter moved, so an update is in force for every request that starts after
//! the control API answered, without copying the whole list per request.

use crate::members::{Member, MemberList};
use crate::ring::Ring;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

pub const MEMBERS_KEY: &str = "dynamic_sharding.members";
pub const GENERATION_KEY: &str = "dynamic_sharding.generation";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another writer changed the key since it was read.
    CasMismatch,
    /// The host refused the call; the text says which and how.
    Host(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CasMismatch => f.write_str("changed concurrently"),
            StoreError::Host(s) => write!(f, "shared data: {s}"),
        }
    }
}

/// Shared key-value storage with compare-and-swap, as Envoy's shared data offers it.
pub trait SharedStore {
    /// The value and its CAS token; `(None, None)` when the key is absent.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Sets the value if the key's CAS token still is `cas` (`None`: unconditionally).
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// In-memory [`SharedStore`] with Envoy's CAS semantics, for native tests and tools.
#[derive(Default, Debug)]
pub struct MemoryStore {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        Ok(match self.entries.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        if let (Some(expected), Some((_, current))) = (cas, self.entries.get(key)) {
            if expected != 0 && expected != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.entries
            .insert(key.to_owned(), (value.to_vec(), self.next_cas));
        Ok(())
    }
}

/// The stored list and its CAS token, or `None` if no update was ever accepted.
pub fn load_members(store: &dyn SharedStore) -> Result<Option<(MemberList, Option<u32>)>, StoreError> {
    match store.get(MEMBERS_KEY)? {
        (Some(bytes), cas) => {
            let list = MemberList::from_json(&bytes)
                .map_err(|e| StoreError::Host(format!("stored list unreadable: {e}")))?;
            Ok(Some((list, cas)))
        }
        (None, _) => Ok(None),
    }
}

/// The update counter; 0 before the first accepted update.
pub fn load_generation(store: &dyn SharedStore) -> Result<u64, StoreError> {
    match store.get(GENERATION_KEY)? {
        (Some(bytes), _) => decode_generation(&bytes),
        (None, _) => Ok(0),
    }
}

fn decode_generation(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| {
        StoreError::Host(format!(
            "{GENERATION_KEY} holds {} bytes, expected 8",
            bytes.len()
        ))
    })?;
    Ok(u64::from_le_bytes(arr))
}

/// Raises the counter by one, retrying (boundedly) when another worker raced us. An unreadable
/// counter is overwritten: any new value makes every worker re-read the list.
pub fn bump_generation(store: &mut dyn SharedStore) -> Result<u64, StoreError> {
    for _ in 0..16 {
        let (bytes, cas) = store.get(GENERATION_KEY)?;
        let current = bytes.map_or(Ok(0), |b| decode_generation(&b)).unwrap_or(0);
        let next = current.wrapping_add(1).max(1);
        match store.set(GENERATION_KEY, &next.to_le_bytes(), cas) {
            Ok(()) => return Ok(next),
            Err(StoreError::CasMismatch) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::CasMismatch)
}

thread_local! {
    /// The ring this thread built last. Envoy gives each listener's filter its own root context
    /// on each worker, so every view of one thread would otherwise build, and keep, its own copy
    /// of the same ring (8 MB at 1,000 members x 500 vnodes).
    static LAST_RING: RefCell<Option<(u32, Rc<Ring>)>> = const { RefCell::new(None) };
}

/// The ring of `members` (sorted, without duplicates, as a [`MemberList`] keeps them), shared with
/// the other views of this thread when it was built already, and derived from the thread's last
/// ring otherwise.
fn ring_for(members: &[Member], vnodes: u32) -> Rc<Ring> {
    LAST_RING.with(|last| {
        let mut last = last.borrow_mut();
        let ring = match last.as_ref() {
            Some((v, ring)) if *v == vnodes && ring.members() == members => return Rc::clone(ring),
            // Only the members that joined are hashed; the rest is a merge.
            Some((v, ring)) if *v == vnodes => Rc::new(ring.rebuilt(members, vnodes)),
            _ => Rc::new(Ring::new(members, vnodes)),
        };
        *last = Some((vnodes, Rc::clone(&ring)));
        ring
    })
}

/// A worker's view of the member list: the ring it routes with and the generation it came from.
#[derive(Debug)]
pub struct MemberView {
    generation: u64,
    list: Rc<MemberList>,
    ring: Rc<Ring>,
    vnodes: u32,
}

/// A change a refresh brought, for the log and the gauges.
#[derive(Debug, PartialEq, Eq)]
pub struct ViewChange {
    pub old_version: u64,
    pub old_count: usize,
    pub new_version: u64,
    pub new_count: usize,
}

impl MemberView {
    /// The view of the bootstrap list (version 0), used until an update is stored.
    pub fn new(bootstrap: &MemberList, vnodes: u32) -> MemberView {
        MemberView {
            generation: 0,
            ring: ring_for(&bootstrap.members, vnodes),
            list: Rc::new(bootstrap.clone()),
            vnodes,
        }
    }

    pub fn ring(&self) -> &Rc<Ring> {
        &self.ring
    }

    pub fn list(&self) -> &Rc<MemberList> {
        &self.list
    }

    /// Catches up with the store: one small read when nothing changed.
    pub fn refresh(&mut self, store: &dyn SharedStore) -> Result<Option<ViewChange>, StoreError> {
        let generation = load_generation(store)?;
        if generation == self.generation {
            return Ok(None);
        }
        let Some((list, _)) = load_members(store)? else {
            return Ok(None);
        };
        self.generation = generation;
        if list == *self.list {
            return Ok(None);
        }
        let change = ViewChange {
            old_version: self.list.version,
            old_count: self.list.len(),
            new_version: list.version,
            new_count: list.len(),
        };
        if list.members != self.list.members {
            self.ring = ring_for(&list.members, self.vnodes);
        }
        self.list = Rc::new(list);
        Ok(Some(change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_cas() {
        let mut s = MemoryStore::default();
        assert_eq!(s.get("k").unwrap(), (None, None));
        s.set("k", b"1", None).unwrap();
        let (_, cas) = s.get("k").unwrap();
        s.set("k", b"2", cas).unwrap();
        assert_eq!(s.set("k", b"3", cas), Err(StoreError::CasMismatch));
        assert_eq!(s.get("k").unwrap().0.unwrap(), b"2");
    }

    #[test]
    fn view_follows_the_generation() {
        let mut s = MemoryStore::default();
        let boot = MemberList::new(0, &["a:1"]).unwrap();
        let mut view = MemberView::new(&boot, 10);
        assert_eq!(view.refresh(&s).unwrap(), None, "nothing stored: bootstrap stays");
        let list = MemberList::new(5, &["a:1", "b:1"]).unwrap();
        s.set(MEMBERS_KEY, list.to_json().as_bytes(), None).unwrap();
        assert_eq!(
            view.refresh(&s).unwrap(),
            None,
            "stored but generation not raised yet"
        );
        bump_generation(&mut s).unwrap();
        let change = view.refresh(&s).unwrap().unwrap();
        assert_eq!(
            (change.old_version, change.new_version, change.new_count),
            (0, 5, 2)
        );
        assert_eq!(view.ring().members().len(), 2);
        assert_eq!(view.refresh(&s).unwrap(), None);
    }

    #[test]
    fn views_of_one_thread_share_one_ring() {
        let mut s = MemoryStore::default();
        let boot = MemberList::new(0, &["a:1", "b:1"]).unwrap();
        let (mut a, mut b) = (MemberView::new(&boot, 10), MemberView::new(&boot, 10));
        assert!(Rc::ptr_eq(a.ring(), b.ring()));
        let list = MemberList::new(5, &["a:1", "c:1"]).unwrap();
        s.set(MEMBERS_KEY, list.to_json().as_bytes(), None).unwrap();
        bump_generation(&mut s).unwrap();
        a.refresh(&s).unwrap();
        b.refresh(&s).unwrap();
        assert!(Rc::ptr_eq(a.ring(), b.ring()));
        assert_eq!(a.ring().members(), list.members.as_slice());
        // Another vnodes setting is another ring.
        assert!(!Rc::ptr_eq(MemberView::new(&list, 20).ring(), a.ring()));
    }

    #[test]
    fn bad_generation_value_is_an_error_not_a_panic() {
        let mut s = MemoryStore::default();
        s.set(GENERATION_KEY, b"xyz", None).unwrap();
        assert!(load_generation(&s)
            .unwrap_err()
            .to_string()
            .contains("expected 8"));
    }
}
