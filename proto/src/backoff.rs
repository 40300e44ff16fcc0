//! One validated, jittered exponential backoff shared by every retry loop (agent reconnects, later the
//! CloudWatch sink): `min · factor^attempt`, capped at `max`, with ±`jitter` spread so a fleet of agents
//! that lost the aggregator at once does not come back in lockstep.

use std::time::Duration;

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BackoffError {
    #[error("backoff min ({min:?}) must be > 0 and <= max ({max:?})")]
    Bounds { min: Duration, max: Duration },
    #[error("backoff factor must be >= 1, got {0}")]
    Factor(f64),
    #[error("backoff jitter must be within [0, 1], got {0}")]
    Jitter(f64),
}

/// The policy; cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    jitter: f64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, factor: f64, jitter: f64) -> Result<Self, BackoffError> {
        if min.is_zero() || min > max {
            return Err(BackoffError::Bounds { min, max });
        }
        if !(factor >= 1.0 && factor.is_finite()) {
            return Err(BackoffError::Factor(factor));
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(BackoffError::Jitter(jitter));
        }
        Ok(Self { min, max, factor, jitter })
    }

    /// Start a sequence of delays, seeded (tests) or random.
    pub fn start(&self, seed: Option<u64>) -> Attempts {
        Attempts { policy: *self, attempt: 0, rng: seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed) }
    }
}

impl Default for Backoff {
    /// 500 ms doubling to 30 s with 20 % jitter.
    fn default() -> Self {
        Self { min: Duration::from_millis(500), max: Duration::from_secs(30), factor: 2.0, jitter: 0.2 }
    }
}

/// The state of one retry loop.
#[derive(Debug)]
pub struct Attempts {
    policy: Backoff,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Attempts {
    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let p = &self.policy;
        let base = p.min.as_secs_f64() * p.factor.powi(self.attempt.min(64) as i32);
        let base = base.min(p.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let spread = 1.0 + p.jitter * (2.0 * self.rng.f64() - 1.0);
        Duration::from_secs_f64((base * spread).min(p.max.as_secs_f64()).max(0.0))
    }

    /// After a success: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let s = Duration::from_secs;
        assert!(Backoff::new(Duration::ZERO, s(1), 2.0, 0.1).is_err());
        assert!(Backoff::new(s(2), s(1), 2.0, 0.1).is_err());
        assert!(Backoff::new(s(1), s(2), 0.5, 0.1).is_err());
        assert!(Backoff::new(s(1), s(2), f64::NAN, 0.1).is_err());
        assert!(Backoff::new(s(1), s(2), 2.0, 1.5).is_err());
        assert!(Backoff::new(s(1), s(2), 2.0, 0.0).is_ok());
    }

    #[test]
    fn grows_caps_jitters_and_resets() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0, 0.0).unwrap_or_default();
        let mut a = b.start(Some(1));
        let d: Vec<u128> = (0..6).map(|_| a.next_delay().as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        a.reset();
        assert_eq!(a.next_delay().as_millis(), 100);
        let j = Backoff::new(Duration::from_millis(1000), Duration::from_secs(10), 2.0, 0.2).unwrap_or_default();
        let mut a = j.start(Some(42));
        let first: Vec<u128> = (0..50)
            .map(|_| {
                a.reset();
                a.next_delay().as_millis()
            })
            .collect();
        assert!(first.iter().all(|d| (800..=1200).contains(d)), "{first:?}");
        assert!(first.iter().any(|d| *d != first[0]), "jitter spreads delays");
    }
}
