//! Exponential back-off with full jitter (PROTOCOL.md section 7): how long to
//! wait before the next attempt to reach the platform. Pure: the caller owns
//! the clock and the timer.

use std::time::Duration;

/// Attempt counter and delay policy for one thing that is retried.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    /// `initial` is the cap of the first delay, `max` the cap of every delay.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: seed(),
        }
    }

    /// The same policy with a fixed random seed, for repeatable tests.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = seed | 1;
        self
    }

    /// Failed attempts since the last [`reset`](Self::reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay: `initial * 2^attempt`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Counts a failure and returns how long to wait: uniformly random in
    /// `[0, ceiling]`, so many connectors that lost the platform together do
    /// not all come back in the same instant.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.next_random() % nanos.saturating_add(1))
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    // xorshift64*: jitter needs spread, not cryptographic strength, and this
    // saves a dependency.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process from the OS, which is all we need.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(std::process::id() as u64);
    hasher.finish() | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS).with_seed(7);
        let mut ceilings = Vec::new();
        for _ in 0..7 {
            ceilings.push(backoff.ceiling().as_millis());
            backoff.next_delay();
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), 100 * MS);
        assert_eq!(backoff.attempt(), 0);
    }

    #[test]
    fn delays_stay_within_their_ceiling_and_are_spread_out() {
        let mut backoff = Backoff::new(MS, 64 * MS).with_seed(42);
        for _ in 0..10 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= 64 * MS));
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!(
            mean > 24 * MS && mean < 40 * MS,
            "full jitter has a mean near half the ceiling: {mean:?}"
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            assert!(backoff.next_delay() <= Duration::from_secs(60));
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(60));
    }

    #[test]
    fn a_maximum_below_the_initial_delay_is_raised_to_it() {
        let backoff = Backoff::new(2 * MS, MS);
        assert_eq!(backoff.ceiling(), 2 * MS);
    }
}
