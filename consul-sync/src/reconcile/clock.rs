//! How far each pushgateway's clock is from consul-sync's, and whether two push times stamped by
//! two pushgateways can be ordered despite it.
//!
//! Every read of a pushgateway gives a bound: its `Date` header was stamped between the moment the
//! request left and the moment the answer's headers arrived (consul-sync's clock), and `Date` is
//! truncated to the second, so the pushgateway's clock minus ours lies in
//! `[date - answered, date + 1 - sent]`: about a second wide. Reads at different fractions of a
//! second narrow it: each bound is intersected with the ones before, widened by the most a clock
//! may slew in between ([`MAX_SLEW`], NTP's limit); a bound that no longer meets the new one (a
//! clock was stepped) starts again from the new one.
//!
//! A skew is *seen* when the bound excludes zero. Only then are two pushgateways' push times
//! compared with it in mind ([`order_holds`]); below what the `Date` header can show, push times
//! are trusted as NTP-synchronised clocks deserve.

use dynamic_sharding::members::Member;
use std::collections::HashMap;

/// How fast a clock may drift from another between two reads, as a fraction: NTP slews at most
/// 500 ppm.
const MAX_SLEW: f64 = 500e-6;

/// One read of a pushgateway: consul-sync's clock when the request left and when the answer's
/// headers arrived, and the answer's `Date` (all Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    pub sent: f64,
    pub answered: f64,
    pub date: f64,
}

/// The pushgateway's clock minus consul-sync's lies in `[low, high]` (seconds), as of `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Offset {
    pub low: f64,
    pub high: f64,
    at: f64,
}

impl Offset {
    /// The bound one reading alone gives.
    pub fn of(r: &Reading) -> Offset {
        Offset {
            low: r.date - r.answered,
            high: r.date + 1.0 - r.sent,
            at: r.answered,
        }
    }

    /// The middle of the bound: what the metric shows.
    pub fn estimate(&self) -> f64 {
        (self.low + self.high) / 2.0
    }

    /// True when the bound shows a skew: it excludes zero.
    pub fn seen(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }

    /// This bound narrowed by a new reading.
    fn update(&self, r: &Reading) -> Offset {
        let new = Offset::of(r);
        let slew = MAX_SLEW * (new.at - self.at).abs();
        let (low, high) = ((self.low - slew).max(new.low), (self.high + slew).min(new.high));
        if low > high {
            new
        } else {
            Offset {
                low,
                high,
                at: new.at,
            }
        }
    }
}

/// The bound of every pushgateway read so far.
#[derive(Clone, Debug, Default)]
pub struct Clocks {
    offsets: HashMap<Member, Offset>,
}

impl Clocks {
    /// Takes one reading of `member`'s clock; returns its bound now.
    pub fn record(&mut self, member: &Member, r: &Reading) -> Offset {
        let next = match self.offsets.get(member) {
            Some(o) => o.update(r),
            None => Offset::of(r),
        };
        self.offsets.insert(member.clone(), next);
        next
    }

    pub fn get(&self, member: &Member) -> Option<&Offset> {
        self.offsets.get(member)
    }

    /// Forgets the pushgateways not in `keep` (they left the configuration).
    pub fn retain(&mut self, keep: impl Fn(&Member) -> bool) {
        self.offsets.retain(|m, _| keep(m));
    }
}

/// True when `newer`'s copy (stamped `newer_time` by `newer`'s clock) is certainly not older than
/// `older`'s copy (stamped `older_time` by `older`'s clock), where the plan found
/// `newer_time >= older_time`. Unless a skew between the two is seen, yes; when one is, only if
/// the difference of the stamps beats the most `newer`'s clock may be ahead of `older`'s.
pub fn order_holds(
    clocks: &Clocks,
    newer: &Member,
    newer_time: f64,
    older: &Member,
    older_time: f64,
) -> bool {
    let (Some(n), Some(o)) = (clocks.get(newer), clocks.get(older)) else {
        return true;
    };
    // `newer`'s clock minus `older`'s lies in [low, high].
    let (low, high) = (n.low - o.high, n.high - o.low);
    if low <= 0.0 && high >= 0.0 {
        return true;
    }
    newer_time - older_time > high
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Member {
        Member::parse(s).unwrap()
    }

    /// A read at Unix time `t` (taking `rtt`) of a clock `skew` seconds ahead.
    fn read(t: f64, rtt: f64, skew: f64) -> Reading {
        Reading {
            sent: t,
            answered: t + rtt,
            date: (t + rtt / 2.0 + skew).floor(),
        }
    }

    #[test]
    fn one_read_bounds_the_offset_within_a_second_and_reads_narrow_it() {
        let mut c = Clocks::default();
        let a = m("a:1");
        let first = c.record(&a, &read(1000.25, 0.01, 30.0));
        assert!(first.low <= 30.0 && first.high >= 30.0, "{first:?}");
        assert!(first.high - first.low <= 1.02);
        assert!(first.seen());
        // Reads at other fractions of a second narrow it.
        let mut last = first;
        for (i, frac) in [0.9, 0.55, 0.1, 0.7, 0.35, 0.8, 0.05].iter().enumerate() {
            last = c.record(&a, &read(1000.0 + 30.0 * (i + 1) as f64 + frac, 0.01, 30.0));
            assert!(last.low <= 30.0 && last.high >= 30.0, "{last:?}");
        }
        assert!(last.high - last.low < 0.3, "narrowed: {last:?}");
        assert!((last.estimate() - 30.0).abs() < 0.2);
        // A stepped clock: the old bound is dropped for the new one.
        let stepped = c.record(&a, &read(20000.5, 0.01, 0.0));
        assert!(
            stepped.low <= 0.0 && stepped.high >= 0.0 && !stepped.seen(),
            "{stepped:?}"
        );
    }

    #[test]
    fn a_right_clock_shows_no_skew() {
        let mut c = Clocks::default();
        for (i, frac) in [0.1, 0.5, 0.9, 0.3, 0.7].iter().enumerate() {
            let o = c.record(&m("a:1"), &read(100.0 * i as f64 + frac, 0.005, 0.0));
            assert!(!o.seen(), "{o:?}");
        }
    }

    #[test]
    fn an_order_that_a_seen_skew_could_reverse_does_not_hold() {
        let (ahead, right) = (m("ahead:1"), m("right:1"));
        let mut c = Clocks::default();
        assert!(order_holds(&c, &ahead, 10.0, &right, 9.0), "no reading: trusted");
        c.record(&ahead, &read(1000.3, 0.01, 30.0));
        c.record(&right, &read(1000.3, 0.01, 0.0));
        // `ahead` stamped 30 s ahead: its copy looks 29 s newer, yet it may be the older one.
        assert!(!order_holds(&c, &ahead, 1029.0, &right, 1000.0));
        // 40 s newer by its clock is newer whatever the skew within the bound.
        assert!(order_holds(&c, &ahead, 1040.0, &right, 1000.0));
        // The right clock's copy looking newer than the one ahead is newer still.
        assert!(order_holds(&c, &right, 1000.0, &ahead, 999.0));
        assert!(order_holds(&c, &right, 1000.0, &ahead, 1000.0));
        // Without a seen skew, push times are trusted even a millisecond apart.
        let other = m("other:1");
        c.record(&other, &read(1000.3, 0.01, 0.2));
        assert!(order_holds(&c, &other, 1000.001, &right, 1000.0));
    }
}
