//! The retry schedule: exponential backoff with jitter.
//!
//! Jitter keeps many clients that failed together (a leader change, a router restart) from
//! retrying in lockstep. "Equal jitter" keeps at least half of the exponential step, so the
//! schedule still backs off when the random draw is small.

use std::time::Duration;

use rand::Rng;

use crate::ClientOptions;

/// The longest wait before retry number `retry` (0 for the first retry): the initial backoff
/// doubled `retry` times, at most the maximum backoff.
pub(crate) fn ceiling(options: &ClientOptions, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    options
        .initial_backoff
        .saturating_mul(factor)
        .min(options.max_backoff)
}

/// The wait before retry number `retry`: uniform between half the ceiling and the ceiling.
pub(crate) fn backoff(options: &ClientOptions, retry: u32) -> Duration {
    let high = ceiling(options, retry);
    let low = high / 2;
    if high <= low {
        return high;
    }
    rand::thread_rng().gen_range(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ClientOptions {
        ClientOptions {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            ..ClientOptions::default()
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let o = options();
        let ms: Vec<u128> = (0..8).map(|n| ceiling(&o, n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        // Huge retry counts neither overflow nor panic.
        assert_eq!(ceiling(&o, 1000), Duration::from_secs(1));
        assert_eq!(ceiling(&o, u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_and_full_ceiling() {
        let o = options();
        for n in 0..10 {
            let high = ceiling(&o, n);
            for _ in 0..100 {
                let d = backoff(&o, n);
                assert!(d >= high / 2 && d <= high, "retry {n}: {d:?} vs {high:?}");
            }
        }
    }

    #[test]
    fn zero_backoff_is_allowed() {
        let o = ClientOptions {
            initial_backoff: Duration::ZERO,
            ..options()
        };
        assert_eq!(backoff(&o, 3), Duration::ZERO);
    }
}
