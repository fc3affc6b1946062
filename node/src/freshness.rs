//! How recently a replica was in touch with its group, for the max-staleness bound of eventual
//! reads.
//!
//! - A follower records when it last accepted an AppendEntries (heartbeat or entries) from its
//!   leader ([`Freshness::heard_from_leader`], called by the Raft service).
//! - A leader records when a quorum last acknowledged it: openraft 0.9.25 reports that as
//!   `RaftMetrics::millis_since_quorum_ack` (measured from when the acknowledged heartbeat was
//!   sent); a task per group turns each report into an instant ([`Freshness::quorum_acked`]),
//!   since the metrics themselves may be up to a tick old when read.
//!
//! A replica serves an eventual read with a bound only when the relevant instant is within it
//! ([`within_staleness`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Instants stored as milliseconds since `base`, plus one (0: never).
#[derive(Debug)]
pub struct Freshness {
    base: Instant,
    heard: AtomicU64,
    acked: AtomicU64,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            base: Instant::now(),
            heard: AtomicU64::new(0),
            acked: AtomicU64::new(0),
        }
    }
}

impl Freshness {
    fn encode(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    fn age_of(&self, raw: u64, now: Instant) -> Option<Duration> {
        let ms = raw.checked_sub(1)?;
        let at = self.base + Duration::from_millis(ms);
        Some(now.saturating_duration_since(at))
    }

    /// A follower accepted an AppendEntries from its current leader just now.
    pub fn heard_from_leader(&self) {
        self.heard
            .fetch_max(self.encode(Instant::now()), Ordering::Relaxed);
    }

    /// A leader was last acknowledged by a quorum at `at` (`None`: not acknowledged in its
    /// current term yet).
    pub fn quorum_acked(&self, at: Option<Instant>) {
        let raw = at.map_or(0, |at| self.encode(at));
        self.acked.store(raw, Ordering::Relaxed);
    }

    /// How long ago the replica was last in touch with its group, as a leader or as a follower.
    pub fn age(&self, is_leader: bool, now: Instant) -> Option<Duration> {
        let raw = if is_leader {
            self.acked.load(Ordering::Relaxed)
        } else {
            self.heard.load(Ordering::Relaxed)
        };
        self.age_of(raw, now)
    }
}

/// Whether a replica last in touch with its group `age` ago (`None`: never) may serve a read
/// bounded by `max_staleness_ms` (0: no bound).
pub fn within_staleness(age: Option<Duration>, max_staleness_ms: u32) -> bool {
    if max_staleness_ms == 0 {
        return true;
    }
    age.is_some_and(|age| age <= Duration::from_millis(u64::from(max_staleness_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_decision() {
        assert!(within_staleness(None, 0));
        assert!(within_staleness(Some(Duration::from_secs(60)), 0));
        assert!(!within_staleness(None, 500));
        assert!(within_staleness(Some(Duration::from_millis(500)), 500));
        assert!(!within_staleness(Some(Duration::from_millis(501)), 500));
    }

    #[test]
    fn leaders_and_followers_use_their_own_clock() {
        let f = Freshness::default();
        let now = Instant::now();
        assert_eq!(f.age(true, now), None);
        assert_eq!(f.age(false, now), None);
        f.heard_from_leader();
        let later = Instant::now() + Duration::from_millis(300);
        let age = f.age(false, later).unwrap();
        assert!(age >= Duration::from_millis(299) && age <= Duration::from_millis(400));
        assert_eq!(f.age(true, later), None);
        f.quorum_acked(Some(Instant::now()));
        assert!(f.age(true, later).unwrap() <= Duration::from_millis(400));
        f.quorum_acked(None);
        assert_eq!(f.age(true, later), None);
    }
}
