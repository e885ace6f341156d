//! Tombstones on consul-sync's side: the `DELETE`s through Envoy that did not reach a pushgateway
//! (its call failed, or it was registered but not passing) and left a copy of their group there.
//!
//! Each reconcile round, on the lease holder only ([`Leadership::may_act`]):
//! 1. collect every Envoy's tombstones (`GET /-/sharding/tombstones`, a page at a time), place
//!    their times on consul-sync's clock (the Envoy sends its own), merge them per group into
//!    Consul KV (one key per group under `dynamic-sharding/<service>/tombstones/`, check-and-set),
//!    and only then acknowledge them to that Envoy, which forgets them;
//! 2. apply each on every pushgateway it names that this round could read: the group is deleted
//!    there if that copy was pushed before the `DELETE` by both clocks (the pushgateway's from its
//!    `Date` header, whole seconds), kept if pushed after it or too close to tell;
//! 3. drop it (logged, counted) per pushgateway once applied, and wholly after `tombstone_ttl`.
//!
//! The rules on times are pure ([`place`], [`judge`]) and tested directly.

use crate::config::Config;
use crate::consul::ConsulClient;
use crate::leader::Leadership;
use crate::metrics::{Metrics, TombstoneResult};
use crate::net::{self, NetError};
use crate::reconcile::clock::Offset;
use crate::reconcile::plan::Holdings;
use crate::reconcile::pushgateway::PushgatewayClient;
use dynamic_sharding::grouping_key::GroupingKey;
use dynamic_sharding::members::Member;
use dynamic_sharding::tombstones::{Tombstone, ACK_PATH, TOMBSTONES_PATH};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes read of one Envoy's page: at most 64 KiB of tombstones, or a single one whose group
/// path is bounded by Envoy's request header limit (60 KiB), a third more in base64.
const MAX_PAGE_ANSWER: usize = 1024 * 1024;
/// Pages taken from one Envoy per round.
const MAX_PAGES: usize = 16;
/// Most tombstones kept in Consul; beyond it new ones stay in the Envoys (not acknowledged, so
/// their lists fill and their `DELETE`s get `503`) until some are applied or expire.
pub const MAX_KEPT: usize = 100_000;

/// A tombstone as kept in Consul, its times on consul-sync's clock (Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kept {
    /// The group, as `GroupingKey::to_path` writes it.
    pub group: String,
    /// The latest `DELETE` arrived at its Envoy no earlier than this...
    pub after_ms: u64,
    /// ...and no later than this.
    pub before_ms: u64,
    /// The pushgateways it has not reached yet, sorted.
    pub pushgateways: Vec<Member>,
}

impl Kept {
    /// Takes in `other` (the same group): the later `DELETE`'s times (it asks every copy older
    /// than itself to go), every pushgateway of both.
    pub fn merge(&mut self, other: &Kept) {
        if other.after_ms > self.after_ms {
            self.after_ms = other.after_ms;
            self.before_ms = other.before_ms;
        }
        self.pushgateways.extend(other.pushgateways.iter().cloned());
        self.pushgateways.sort();
        self.pushgateways.dedup();
    }
}

/// An Envoy's tombstone on consul-sync's clock: that Envoy's clock read `envoy_now_ms` at some
/// moment between `sent_ms` and `received_ms` of consul-sync's.
pub fn place(t: &Tombstone, envoy_now_ms: u64, sent_ms: u64, received_ms: u64) -> Kept {
    // Envoy's clock minus ours lies in [envoy_now - received, envoy_now - sent].
    Kept {
        group: t.group.clone(),
        after_ms: (t.at_ms + sent_ms).saturating_sub(envoy_now_ms),
        before_ms: (t.at_ms + received_ms).saturating_sub(envoy_now_ms),
        pushgateways: t.pushgateways.clone(),
    }
}

/// What a tombstone does to one pushgateway's copy of its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pushed before the `DELETE` by both clocks: delete it.
    Delete,
    /// Kept, and why: pushed after the `DELETE`, or too close to it to tell.
    Keep(TombstoneResult),
}

/// Judges a copy last changed (pushed, or a push refused) at `push_time` (seconds, the
/// pushgateway's clock, whose offset from ours lies within `clock`). A copy changed after the
/// `DELETE` must never go, whatever the clocks' skew: only a copy whose latest possible time, on
/// consul-sync's clock, is before the earliest the `DELETE` can have been is deleted.
pub fn judge(k: &Kept, push_time: f64, clock: &Offset) -> Verdict {
    let latest = (push_time - clock.low) * 1000.0;
    let earliest = (push_time - clock.high) * 1000.0;
    if latest < k.after_ms as f64 {
        Verdict::Delete
    } else if earliest > k.before_ms as f64 {
        Verdict::Keep(TombstoneResult::Newer)
    } else {
        Verdict::Keep(TombstoneResult::Unclear)
    }
}

/// consul-sync's clock, Unix milliseconds.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The Consul KV key of a group's tombstone: its ring hash, so every Envoy's tombstones of one
/// group meet under one key.
fn kv_key(prefix: &str, key: &GroupingKey) -> String {
    format!("{prefix}{:016x}", key.hash())
}

/// Tombstones kept in Consul: each by its KV key, with its modify index (0: not stored yet).
type KeptMap = BTreeMap<String, (Kept, u64)>;

/// One Envoy's page of tombstones.
#[derive(Deserialize)]
struct Page {
    now_ms: u64,
    tombstones: Vec<Tombstone>,
    #[serde(default)]
    more: bool,
}

/// The tombstone step of the reconcile round.
pub struct Tombstones {
    consul: ConsulClient,
    envoys: Vec<String>,
    token: String,
    http: reqwest::Client,
    prefix: String,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
}

impl Tombstones {
    pub fn new(
        config: &Config,
        consul: ConsulClient,
        metrics: Arc<Metrics>,
        leadership: Arc<Leadership>,
    ) -> Result<Tombstones, reqwest::Error> {
        Ok(Tombstones {
            consul,
            envoys: config.envoy.control_urls.clone(),
            token: config.envoy.token.clone().unwrap_or_default(),
            http: net::client(CONNECT_TIMEOUT)?,
            prefix: format!("dynamic-sharding/{}/tombstones/", config.service_name),
            metrics,
            leadership,
        })
    }

    /// One round: collect, keep, acknowledge, apply on the pushgateways in `holdings` (those
    /// this round read, with what they held) through `pushgateways`, expire after `ttl`.
    pub async fn round(
        &self,
        pushgateways: &PushgatewayClient,
        holdings: &BTreeMap<Member, Holdings>,
        ttl: Duration,
    ) {
        if !self.leadership.may_act() {
            return;
        }
        let Some(mut kept) = self.load().await else {
            return;
        };
        let collected = self.collect(&mut kept).await;
        if !collected.is_empty() {
            // What was written has new modify indexes; what was not, is not kept.
            match self.load().await {
                Some(k) => kept = k,
                None => return,
            }
        }
        self.apply(pushgateways, &mut kept, holdings, &collected, ttl)
            .await;
        self.metrics.tombstones_kept(kept.len());
    }

    /// The tombstones kept in Consul; `None` (logged, counted) when they cannot be read.
    async fn load(&self) -> Option<KeptMap> {
        let entries = match self.consul.kv_list(&self.prefix).await {
            Ok(e) => e,
            Err(e) => {
                self.metrics.tombstone_error("store");
                warn!("{e}; tombstones are left as they are this round");
                return None;
            }
        };
        let mut kept = KeptMap::new();
        for e in entries {
            match serde_json::from_slice::<Kept>(&e.value) {
                Ok(k) => {
                    kept.insert(e.key, (k, e.modify_index));
                }
                Err(why) => {
                    self.metrics.tombstone_error("store");
                    warn!("Consul key {} is not a tombstone ({why}); left alone", e.key);
                }
            }
        }
        Some(kept)
    }

    /// Takes every Envoy's tombstones into `kept` and Consul; the keys it merged into.
    async fn collect(&self, kept: &mut KeptMap) -> BTreeSet<String> {
        let mut collected = BTreeSet::new();
        for envoy in &self.envoys {
            for _ in 0..MAX_PAGES {
                let (page, sent_ms, received_ms) = match self.page(envoy).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.metrics.tombstone_error("collect");
                        warn!("{e}; its tombstones are collected next round");
                        break;
                    }
                };
                if page.tombstones.is_empty() {
                    break;
                }
                let (done, all) = self.keep(kept, &page, sent_ms, received_ms, &mut collected).await;
                let acked = done.is_empty() || self.acknowledge(envoy, &done, kept.len()).await;
                if !acked || !all || !page.more {
                    break;
                }
            }
        }
        collected
    }

    /// Merges a page into `kept` and writes the keys it touched. Returns the ids of the
    /// tombstones now kept in Consul (or dropped: no group), which the Envoy may forget, and
    /// whether that is all of them.
    async fn keep(
        &self,
        kept: &mut KeptMap,
        page: &Page,
        sent_ms: u64,
        received_ms: u64,
        collected: &mut BTreeSet<String>,
    ) -> (Vec<u64>, bool) {
        let mut done: Vec<u64> = Vec::new();
        let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut all = true;
        for t in &page.tombstones {
            let Ok(key) = GroupingKey::from_path(&t.group) else {
                // No push path names it: nothing to delete anywhere.
                warn!("a tombstone names {:?}, which is no group; dropped", t.group);
                done.push(t.id);
                continue;
            };
            let placed = place(t, page.now_ms, sent_ms, received_ms);
            let kv = kv_key(&self.prefix, &key);
            let full = kept.len() >= MAX_KEPT;
            match kept.get_mut(&kv) {
                Some((k, _)) if k.group != placed.group => {
                    warn!(
                        "the tombstones of {} and {} share Consul key {kv}; the first stays in its Envoy",
                        placed.group, k.group
                    );
                    all = false;
                    continue;
                }
                Some((k, _)) => k.merge(&placed),
                None if full => {
                    self.metrics.tombstone_error("full");
                    warn!(
                        "{MAX_KEPT} tombstones are kept in Consul already; the tombstone of {} stays in its Envoy",
                        placed.group
                    );
                    all = false;
                    continue;
                }
                None => {
                    kept.insert(kv.clone(), (placed, 0));
                }
            }
            collected.insert(kv.clone());
            by_key.entry(kv).or_default().push(t.id);
        }
        for (kv, ids) in by_key {
            let Some((k, index)) = kept.get(&kv) else { continue };
            if !self.leadership.may_act() {
                return (done, false);
            }
            match self.write(&kv, k, *index).await {
                Ok(true) => done.extend(ids),
                Ok(false) => {
                    all = false;
                    debug!(
                        "Consul key {kv} changed meanwhile; its tombstones are collected again next round"
                    );
                }
                Err(e) => {
                    all = false;
                    self.metrics.tombstone_error("store");
                    warn!("{e}; the tombstone of {} stays in its Envoy", k.group);
                }
            }
        }
        (done, all)
    }

    async fn write(&self, kv: &str, k: &Kept, index: u64) -> Result<bool, NetError> {
        let value = serde_json::to_vec(k).unwrap_or_default();
        self.consul.kv_put(kv, value, index).await
    }

    /// One page of `envoy`'s tombstones, and consul-sync's clock before and after.
    async fn page(&self, envoy: &str) -> Result<(Page, u64, u64), NetError> {
        const WHAT: &str = "collecting tombstones";
        let peer = format!("envoy {envoy}");
        let req = self
            .http
            .get(format!("{envoy}{TOMBSTONES_PATH}"))
            .bearer_auth(&self.token)
            .timeout(REQUEST_TIMEOUT);
        let sent_ms = unix_millis();
        let resp = net::send(WHAT, &peer, req, &[200]).await?;
        let body = net::read_limited(resp, MAX_PAGE_ANSWER)
            .await
            .map_err(|e| e.into_net(WHAT, &peer))?;
        let received_ms = unix_millis();
        let page =
            serde_json::from_slice(&body).map_err(|e| NetError::bad_response(WHAT, &peer, e.to_string()))?;
        Ok((page, sent_ms, received_ms))
    }

    /// Tells `envoy` to forget the tombstones `ids`; false (logged, counted) when it did not
    /// answer so.
    async fn acknowledge(&self, envoy: &str, ids: &[u64], kept: usize) -> bool {
        const WHAT: &str = "acknowledging tombstones";
        let req = self
            .http
            .post(format!("{envoy}{ACK_PATH}"))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "ids": ids }).to_string())
            .timeout(REQUEST_TIMEOUT);
        match net::send(WHAT, &format!("envoy {envoy}"), req, &[200]).await {
            Ok(_) => {
                self.metrics.tombstones_collected.inc_by(ids.len() as u64);
                info!(
                    "took {} tombstones from envoy {envoy}; {kept} kept in Consul",
                    ids.len()
                );
                true
            }
            Err(e) => {
                self.metrics.tombstone_error("ack");
                warn!("{e}; they are collected again next round (merging them again is harmless)");
                false
            }
        }
    }

    /// Applies what can be applied, expires what waited too long, and writes what changed.
    /// `collected`: the tombstones this round took in, whose `DELETE` may have come after
    /// `holdings` were read (a copy missing there may have been pushed since).
    async fn apply(
        &self,
        pushgateways: &PushgatewayClient,
        kept: &mut KeptMap,
        holdings: &BTreeMap<Member, Holdings>,
        collected: &BTreeSet<String>,
        ttl: Duration,
    ) {
        let now_ms = unix_millis();
        let ttl_ms = ttl.as_millis() as u64;
        let mut changed: BTreeSet<String> = BTreeSet::new();
        // Per pushgateway, the tombstones whose group it held when this round read it.
        let mut due: BTreeMap<Member, Vec<String>> = BTreeMap::new();
        for (kv, (k, _)) in kept.iter_mut() {
            if now_ms.saturating_sub(k.before_ms) > ttl_ms {
                for p in &k.pushgateways {
                    self.metrics.tombstone_closed(TombstoneResult::Expired);
                    warn!(
                        "the tombstone of {} expired (tombstone_ttl {ttl:?}) before pushgateway {p} could be read: \
                         a copy of the group may remain there; delete it by hand",
                        k.group
                    );
                }
                k.pushgateways.clear();
                changed.insert(kv.clone());
                continue;
            }
            let Ok(key) = GroupingKey::from_path(&k.group) else {
                continue;
            };
            let before = k.pushgateways.len();
            let just_collected = collected.contains(kv);
            k.pushgateways.retain(|p| match holdings.get(p) {
                Some(held) if held.contains_key(&key) || just_collected => {
                    due.entry(p.clone()).or_default().push(kv.clone());
                    true
                }
                Some(_) => {
                    self.metrics.tombstone_closed(TombstoneResult::Absent);
                    debug!("tombstone of {}: pushgateway {p} holds no copy", k.group);
                    false
                }
                None => true,
            });
            if k.pushgateways.len() != before {
                changed.insert(kv.clone());
            }
        }
        for (member, kvs) in due {
            if !self.leadership.may_act() {
                break;
            }
            self.apply_on(pushgateways, &member, &kvs, kept, &mut changed)
                .await;
        }
        for kv in changed {
            self.store_change(kept, &kv).await;
        }
    }

    /// The tombstones `kvs` on `member`: read its groups and its clock again, then delete the
    /// copies pushed (or last refused) before their `DELETE`.
    async fn apply_on(
        &self,
        pushgateways: &PushgatewayClient,
        member: &Member,
        kvs: &[String],
        kept: &mut KeptMap,
        changed: &mut BTreeSet<String>,
    ) {
        let read = match pushgateways.read(member).await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.tombstone_error("apply");
                warn!("{e}; its tombstones are applied in a later round");
                return;
            }
        };
        let Some(clock) = read.clock.as_ref().map(Offset::of) else {
            self.metrics.tombstone_error("apply");
            warn!(
                "pushgateway {member} answered without a readable Date header: its clock is unknown, so its \
                 tombstones are applied in a later round"
            );
            return;
        };
        let held: HashMap<GroupingKey, f64> = read
            .times
            .groups
            .into_iter()
            .map(|(key, stamps)| (key, stamps.latest()))
            .collect();
        for kv in kvs {
            let Some((k, _)) = kept.get_mut(kv) else { continue };
            let Ok(key) = GroupingKey::from_path(&k.group) else {
                continue;
            };
            let result = match held.get(&key) {
                None => TombstoneResult::Absent,
                Some(&pushed) => match judge(k, pushed, &clock) {
                    Verdict::Delete => match pushgateways.delete(member, &key).await {
                        Ok(()) => {
                            info!(
                                "applied the tombstone of {} on pushgateway {member}: deleted its copy, pushed at {pushed:.3} \
                                 (its clock), before the DELETE",
                                k.group
                            );
                            TombstoneResult::Deleted
                        }
                        Err(e) => {
                            self.metrics.tombstone_error("apply");
                            warn!(
                                "applying the tombstone of {}: {e}; tried again next round",
                                k.group
                            );
                            continue;
                        }
                    },
                    Verdict::Keep(why) => {
                        let when = if why == TombstoneResult::Newer {
                            "after the DELETE"
                        } else {
                            "too close to the DELETE to tell by the clocks (within about a second)"
                        };
                        warn!(
                            "the tombstone of {} leaves its copy on pushgateway {member}: it was pushed at {pushed:.3} (its clock), {when}",
                            k.group
                        );
                        why
                    }
                },
            };
            self.metrics.tombstone_closed(result);
            k.pushgateways.retain(|p| p != member);
            changed.insert(kv.clone());
        }
    }

    /// Writes a changed tombstone back, or deletes its key once it names no pushgateway.
    async fn store_change(&self, kept: &mut KeptMap, kv: &str) {
        let Some((k, index)) = kept.get(kv).cloned() else {
            return;
        };
        if !self.leadership.may_act() {
            return;
        }
        let result = if k.pushgateways.is_empty() {
            self.consul.kv_delete(kv, index).await
        } else {
            self.write(kv, &k, index).await
        };
        match result {
            Ok(true) if k.pushgateways.is_empty() => {
                kept.remove(kv);
            }
            Ok(true) => {}
            Ok(false) => debug!("Consul key {kv} changed meanwhile; read again next round"),
            Err(e) => {
                self.metrics.tombstone_error("store");
                warn!("{e}; the tombstone of {} is written again next round", k.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::clock::Reading;

    fn m(list: &[&str]) -> Vec<Member> {
        list.iter().map(|s| Member::parse(s).unwrap()).collect()
    }

    fn kept(after_ms: u64, before_ms: u64, pushgateways: &[&str]) -> Kept {
        Kept {
            group: "/metrics/job/j".into(),
            after_ms,
            before_ms,
            pushgateways: m(pushgateways),
        }
    }

    #[test]
    fn an_envoys_time_is_placed_on_our_clock_with_its_uncertainty() {
        let t = Tombstone {
            id: 1,
            group: "/metrics/job/j".into(),
            at_ms: 10_000,
            pushgateways: m(&["a:1"]),
        };
        // Envoy's clock runs 5 s ahead; the answer took 40 ms.
        let k = place(&t, 20_000, 14_980, 15_020);
        assert_eq!((k.after_ms, k.before_ms), (4_980, 5_020));
    }

    #[test]
    fn merging_keeps_the_later_delete_and_every_pushgateway() {
        let mut a = kept(100, 110, &["b:1", "a:1"]);
        a.pushgateways.sort();
        a.merge(&kept(200, 230, &["c:1", "a:1"]));
        assert_eq!(a, kept(200, 230, &["a:1", "b:1", "c:1"]));
        a.merge(&kept(50, 60, &["d:1"]));
        assert_eq!((a.after_ms, a.before_ms, a.pushgateways.len()), (200, 230, 4));
    }

    #[test]
    fn only_a_copy_pushed_before_the_delete_by_both_clocks_goes() {
        // The DELETE: between 100.000 s and 100.050 s on our clock.
        let k = kept(100_000, 100_050, &["a:1"]);
        // The pushgateway's Date said 200 s while our clock read 100.000 to 100.010 s: its
        // clock runs between 99.990 s and 100.999 s ahead.
        let clock = Offset::of(&Reading {
            sent: 100.000,
            answered: 100.010,
            date: 200.0,
        });
        // Pushed at 198.9 (its clock): at the latest 98.91 s on ours.
        assert_eq!(judge(&k, 198.9, &clock), Verdict::Delete);
        // Pushed at 199.9: between 98.901 and 99.91 s on ours, before 100.000: goes.
        assert_eq!(judge(&k, 199.9, &clock), Verdict::Delete);
        // Pushed at 200.5: between 99.501 and 100.51 s: cannot tell.
        assert_eq!(judge(&k, 200.5, &clock), Verdict::Keep(TombstoneResult::Unclear));
        // Pushed at 201.2: at the earliest 100.201 s, after 100.050: pushed after the DELETE.
        assert_eq!(judge(&k, 201.2, &clock), Verdict::Keep(TombstoneResult::Newer));
        // However far its clock is behind, a push after the DELETE is never judged older.
        let behind = Offset::of(&Reading {
            sent: 100.000,
            answered: 100.010,
            date: 40.0,
        });
        assert_eq!(judge(&k, 40.1, &behind), Verdict::Keep(TombstoneResult::Unclear));
        assert_eq!(judge(&k, 41.2, &behind), Verdict::Keep(TombstoneResult::Newer));
        assert_eq!(judge(&k, 38.9, &behind), Verdict::Delete);
    }

    #[test]
    fn a_groups_tombstones_share_one_key() {
        let a = GroupingKey::from_path("/metrics/job/j/b/2/a/1").unwrap();
        let b = GroupingKey::from_path("/metrics/job@base64/ag/a/1/b/2").unwrap();
        let p = "dynamic-sharding/pushgateway/tombstones/";
        assert_eq!(kv_key(p, &a), kv_key(p, &b));
        assert!(kv_key(p, &a).starts_with(p) && kv_key(p, &a).len() == p.len() + 16);
    }
}
