//! Versions: a hybrid logical clock per node plus the origin's EID.
//!
//! An [`Hlc`] packs wall-clock milliseconds (high 48 bits) and a logical counter (low 16
//! bits) into one `u64`, so versions compare as plain integers and cost 8 bytes.

use std::fmt;

use crate::eid::Eid;

/// Bits of an [`Hlc`] given to the logical counter.
const COUNTER_BITS: u32 = 16;

/// A hybrid logical clock reading: wall milliseconds and a counter, ordered as one number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hlc(pub u64);

impl Hlc {
    /// The reading that sorts before every real change; used for data found in AstDB
    /// before any version was known for it, so that any versioned change wins over it.
    pub const ZERO: Hlc = Hlc(0);

    pub fn from_parts(wall_ms: u64, counter: u16) -> Self {
        Hlc((wall_ms << COUNTER_BITS) | u64::from(counter))
    }

    /// The wall-clock part, in milliseconds since the epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> COUNTER_BITS
    }

    pub fn counter(self) -> u16 {
        (self.0 & ((1 << COUNTER_BITS) - 1)) as u16
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.counter())
    }
}

/// The version of one change: higher wins; equal clocks are ordered by origin EID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: Hlc,
    pub origin: Eid,
}

impl Version {
    pub fn new(hlc: Hlc, origin: Eid) -> Self {
        Version { hlc, origin }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.origin)
    }
}

/// This node's hybrid logical clock.
///
/// Readings never go backwards, even when the wall clock steps back: the counter carries
/// the clock forward until the wall clock catches up. Readings seen from peers are folded
/// in so that a change made after seeing another is ordered after it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock that will never issue a reading at or below `high_water`.
    pub(crate) fn resume_after(high_water: Hlc) -> Self {
        Clock { last: high_water }
    }

    /// A fresh reading, strictly above every earlier reading and every observed one.
    pub(crate) fn tick(&mut self, wall_ms: u64) -> Hlc {
        let candidate = Hlc::from_parts(wall_ms, 0);
        // Counter overflow carries into the millisecond part: still strictly increasing.
        self.last = if candidate > self.last {
            candidate
        } else {
            Hlc(self.last.0.saturating_add(1))
        };
        self.last
    }

    /// Folds in a reading seen from a peer (already checked against the skew bound).
    pub(crate) fn observe(&mut self, seen: Hlc) {
        if seen > self.last {
            self.last = seen;
        }
    }

    /// The highest reading issued or observed: persisted so a restart never reissues one.
    pub(crate) fn high_water(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_when_the_wall_clock_steps_back() {
        let mut c = Clock::default();
        let a = c.tick(10_000);
        let b = c.tick(5_000);
        let d = c.tick(5_000);
        assert!(a < b && b < d);
        assert_eq!(b.wall_ms(), 10_000);
        let e = c.tick(20_000);
        assert_eq!(e, Hlc::from_parts(20_000, 0));
    }

    #[test]
    fn clock_orders_local_changes_after_observed_ones() {
        let mut c = Clock::default();
        c.tick(1_000);
        c.observe(Hlc::from_parts(2_000, 7));
        assert_eq!(c.tick(1_500), Hlc::from_parts(2_000, 8));
    }

    #[test]
    fn resumed_clock_never_reissues_a_reading() {
        let hw = Hlc::from_parts(9_000, 3);
        let mut c = Clock::resume_after(hw);
        assert!(c.tick(1_000) > hw);
    }

    #[test]
    fn equal_clocks_are_ordered_by_origin_eid() {
        let h = Hlc::from_parts(1, 0);
        assert!(
            Version::new(h, Eid([0, 0, 0, 0, 0, 2])) > Version::new(h, Eid([0, 0, 0, 0, 0, 1]))
        );
    }
}
