//! Member list versions: the clock that numbers new lists ([`VersionClock`]), and the versions
//! the Envoys hold ([`Versions`]), which the pushers see in answers and the watcher numbers new
//! lists above.

use std::time::{SystemTime, UNIX_EPOCH};

/// The highest list version any Envoy answered with, and a wake-up for the watcher when an Envoy
/// refused our list for another writer's higher version.
///
/// Versions are observation times, so a consul-sync whose clock runs ahead sends higher versions;
/// if it dies, the others' lists would be refused until their clocks catch up. So every new list
/// gets a version above the highest seen, and after a refusal the watcher reads Consul again: if
/// our list is what Consul says now, it is sent again with a version above the other writer's.
#[derive(Debug, Default)]
pub struct Versions {
    seen: std::sync::atomic::AtomicU64,
    conflicts: tokio::sync::Notify,
}

impl Versions {
    /// Records a version an Envoy holds.
    pub fn saw(&self, version: u64) {
        self.seen.fetch_max(version, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a refusal for another writer's `version`, and wakes the watcher.
    pub fn conflict(&self, version: u64) {
        self.saw(version);
        self.conflicts.notify_one();
    }

    /// The lowest version every Envoy would take as newer.
    pub fn floor(&self) -> u64 {
        self.seen
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Completes after the next refusal.
    pub async fn refused(&self) {
        self.conflicts.notified().await;
    }
}

/// Versions: Unix milliseconds of the observation, strictly increasing within the process.
#[derive(Clone, Debug, Default)]
pub struct VersionClock {
    last: u64,
}

impl VersionClock {
    /// `max(now_ms, last + 1)`.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        let v = now_ms.max(self.last.saturating_add(1));
        self.last = v;
        v
    }
}

pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_observation_times_and_strictly_increase() {
        let mut c = VersionClock::default();
        assert_eq!(c.next(1_000), 1_000);
        assert_eq!(c.next(1_000), 1_001, "same millisecond");
        assert_eq!(c.next(900), 1_002, "clock stepped back");
        assert_eq!(c.next(5_000), 5_000);
        // A restarted process starts from the clock, above what it sent before.
        assert!(VersionClock::default().next(unix_millis()) > 5_000);
    }
}
