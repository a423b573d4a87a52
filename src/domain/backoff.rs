use rand::Rng;

/// How hard herald tries one destination. Per destination, from config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends before a delivery is declared dead.
    pub attempts_max: u32,
    /// First backoff ceiling; doubles per attempt.
    pub base_ms: u64,
    /// No computed delay and no Retry-After ever exceeds this.
    pub cap_ms: u64,
    /// Optional: a delivery still unconfirmed this long after its broadcast
    /// was accepted is declared dead instead of retried.
    pub deadline_ms: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 8,
            base_ms: 1_000,
            cap_ms: 600_000,
            deadline_ms: None,
        }
    }
}

/// Exponential backoff with full jitter: `rand(0, min(cap, base * 2^(n-1)))`
/// where `n` is the number of attempts made so far (at least 1). A
/// destination's Retry-After replaces the computed delay, clamped to the cap.
pub fn retry_delay_ms(
    policy: &RetryPolicy,
    attempts_made: u32,
    retry_after_ms: Option<u64>,
    rng: &mut impl Rng,
) -> u64 {
    if let Some(retry_after_ms) = retry_after_ms {
        return retry_after_ms.min(policy.cap_ms);
    }
    let exponent = attempts_made.saturating_sub(1).min(62);
    let ceiling_ms = policy
        .base_ms
        .saturating_mul(1u64 << exponent)
        .min(policy.cap_ms);
    if ceiling_ms == 0 {
        return 0;
    }
    rng.random_range(0..=ceiling_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    proptest! {
        #[test]
        fn delay_never_exceeds_cap_or_exponential_ceiling(
            base_ms in 0u64..100_000,
            cap_ms in 0u64..10_000_000,
            attempts in 0u32..200,
            retry_after in proptest::option::of(0u64..100_000_000),
            seed in any::<u64>(),
        ) {
            let policy = RetryPolicy { attempts_max: 8, base_ms, cap_ms, deadline_ms: None };
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = retry_delay_ms(&policy, attempts, retry_after, &mut rng);
            prop_assert!(delay <= cap_ms);
            match retry_after {
                Some(ra) => prop_assert_eq!(delay, ra.min(cap_ms)),
                None => {
                    let exp = attempts.saturating_sub(1).min(62);
                    prop_assert!(delay <= base_ms.saturating_mul(1 << exp));
                }
            }
        }
    }

    #[test]
    fn ceiling_doubles_until_cap() {
        let policy = RetryPolicy {
            attempts_max: 8,
            base_ms: 1_000,
            cap_ms: 5_000,
            deadline_ms: None,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let max_seen = |n: u32, rng: &mut StdRng| {
            (0..2_000)
                .map(|_| retry_delay_ms(&policy, n, None, rng))
                .max()
                .unwrap()
        };
        assert!(max_seen(1, &mut rng) <= 1_000);
        assert!(max_seen(2, &mut rng) > 1_000);
        assert!(max_seen(2, &mut rng) <= 2_000);
        assert!(max_seen(10, &mut rng) <= 5_000);
        assert!(max_seen(10, &mut rng) > 4_000);
    }
}
