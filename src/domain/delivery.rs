use rand::Rng;

use super::backoff::{retry_delay_ms, RetryPolicy};
use super::outcome::OutcomeClass;

/// Where one delivery (one broadcast to one destination) stands.
/// See the diagram in DESIGN.md, "Delivery states".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// An earlier delivery of the same thread to the same destination is not
    /// final yet; this one must not overtake it.
    Waiting,
    /// Due for its first attempt.
    Pending,
    /// An attempt is in flight. After a crash this means "maybe delivered".
    Sending,
    /// The last attempt failed in a way that may heal; due again later.
    Retrying,
    /// The last attempt may or may not have landed; look before re-sending.
    Verifying,
    Confirmed,
    Failed,
    Dead,
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 9] = [
        DeliveryState::Waiting,
        DeliveryState::Pending,
        DeliveryState::Sending,
        DeliveryState::Retrying,
        DeliveryState::Verifying,
        DeliveryState::Confirmed,
        DeliveryState::Failed,
        DeliveryState::Dead,
        DeliveryState::Cancelled,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryState::Confirmed
                | DeliveryState::Failed
                | DeliveryState::Dead
                | DeliveryState::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Waiting => "waiting",
            DeliveryState::Pending => "pending",
            DeliveryState::Sending => "sending",
            DeliveryState::Retrying => "retrying",
            DeliveryState::Verifying => "verifying",
            DeliveryState::Confirmed => "confirmed",
            DeliveryState::Failed => "failed",
            DeliveryState::Dead => "dead",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        DeliveryState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Final, but not confirmed: an operator retry sends it again. Cancelled
    /// counts too: cancelling is an operator's choice, and an operator may
    /// change their mind (DESIGN.md lists only failed and dead; the
    /// decision is in ARCHITECTURE.md).
    pub fn is_retryable_by_operator(self) -> bool {
        matches!(
            self,
            DeliveryState::Failed | DeliveryState::Dead | DeliveryState::Cancelled
        )
    }
}

/// What a verification (read-back after an ambiguous outcome) found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// The destination has the message: confirm without re-sending.
    Found,
    /// The destination was read and does not have it: re-send.
    Absent,
    /// The destination cannot be read back: re-send with the same key.
    Unknown,
}

/// Everything that can happen to a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The earlier delivery of its thread on this destination became final.
    ThreadReady,
    /// A worker took the delivery for an attempt.
    Lease,
    /// The attempt ended with this outcome.
    Finished {
        class: OutcomeClass,
        retry_after_ms: Option<u64>,
    },
    /// A read-back after an ambiguous outcome ended. `resend_may_duplicate`
    /// is true when the destination cannot deduplicate a re-send by key.
    Verified {
        result: Verification,
        resend_may_duplicate: bool,
    },
    /// herald stopped (crash, kill -9) while an attempt was in flight.
    Interrupted,
    /// An operator cancelled the delivery.
    Cancel,
    /// An operator asked to try a failed, dead or cancelled delivery again.
    OperatorRetry,
}

/// The part of a delivery that the state machine owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryProgress {
    pub state: DeliveryState,
    /// Sends so far. Only ever grows.
    pub attempts_made: u32,
    /// Sends allowed before the delivery is dead. Only ever grows (an
    /// operator retry grants a new budget on top of what was used).
    pub attempts_max: u32,
    /// When a pending, retrying or verifying delivery is next due.
    pub due_at_ms: Option<i64>,
    /// Past this instant the delivery is dead rather than retried.
    pub deadline_at_ms: Option<i64>,
    /// A re-send happened that the destination could not deduplicate.
    pub possible_duplicate: bool,
}

/// The result of applying an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub progress: DeliveryProgress,
    /// The backoff chosen, when the event scheduled a retry.
    pub retry_delay_ms: Option<u64>,
    /// Pause every delivery of this destination for this long (a 429).
    pub pause_destination_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} does not apply to a delivery that is {}", state.as_str())]
pub struct TransitionError {
    pub state: DeliveryState,
    pub event: Event,
}

impl DeliveryProgress {
    /// A new delivery: pending and due now, or waiting behind its thread.
    pub fn new(
        policy: &RetryPolicy,
        behind_earlier_in_thread: bool,
        created_at_ms: i64,
    ) -> DeliveryProgress {
        let (state, due_at_ms) = if behind_earlier_in_thread {
            (DeliveryState::Waiting, None)
        } else {
            (DeliveryState::Pending, Some(created_at_ms))
        };
        DeliveryProgress {
            state,
            attempts_made: 0,
            attempts_max: policy.attempts_max.max(1),
            due_at_ms,
            deadline_at_ms: policy
                .deadline_ms
                .map(|d| created_at_ms.saturating_add(d as i64)),
            possible_duplicate: false,
        }
    }

    /// Applies `event` at `now_ms`. Events that do not apply to the current
    /// state are refused and change nothing.
    pub fn apply(
        &self,
        event: Event,
        policy: &RetryPolicy,
        now_ms: i64,
        rng: &mut impl Rng,
    ) -> Result<Transition, TransitionError> {
        use DeliveryState as S;
        let refuse = || TransitionError {
            state: self.state,
            event,
        };
        let mut next = self.clone();
        let transition = |progress: DeliveryProgress| Transition {
            progress,
            retry_delay_ms: None,
            pause_destination_ms: None,
        };
        match (self.state, event) {
            (S::Waiting, Event::ThreadReady) => {
                next.state = S::Pending;
                next.due_at_ms = Some(now_ms);
                Ok(transition(next))
            }
            (S::Pending | S::Retrying, Event::Lease)
                if self
                    .deadline_at_ms
                    .is_some_and(|deadline| now_ms > deadline) =>
            {
                // Past its deadline (a long outage, a backlog): too late to send.
                next.state = S::Dead;
                next.due_at_ms = None;
                Ok(transition(next))
            }
            (S::Pending | S::Retrying, Event::Lease) => {
                next.state = S::Sending;
                next.attempts_made = next.attempts_made.saturating_add(1);
                next.due_at_ms = None;
                Ok(transition(next))
            }
            (
                S::Sending,
                Event::Finished {
                    class,
                    retry_after_ms,
                },
            ) => match class {
                OutcomeClass::Success => {
                    next.state = S::Confirmed;
                    next.due_at_ms = None;
                    Ok(transition(next))
                }
                OutcomeClass::Permanent => {
                    next.state = S::Failed;
                    next.due_at_ms = None;
                    Ok(transition(next))
                }
                OutcomeClass::Ambiguous => {
                    next.state = S::Verifying;
                    next.due_at_ms = Some(now_ms);
                    Ok(transition(next))
                }
                OutcomeClass::Retryable => Ok(self.retry_or_die(policy, now_ms, None, rng)),
                OutcomeClass::RateLimited => {
                    let mut t = self.retry_or_die(policy, now_ms, retry_after_ms, rng);
                    // The pause holds even when this delivery is out of
                    // attempts: the others must not hammer the destination.
                    t.pause_destination_ms = Some(t.retry_delay_ms.unwrap_or_else(|| {
                        retry_delay_ms(policy, self.attempts_made, retry_after_ms, rng)
                    }));
                    Ok(t)
                }
            },
            (S::Sending, Event::Interrupted) => {
                next.state = S::Verifying;
                next.due_at_ms = Some(now_ms);
                Ok(transition(next))
            }
            (
                S::Verifying,
                Event::Verified {
                    result,
                    resend_may_duplicate,
                },
            ) => match result {
                Verification::Found => {
                    next.state = S::Confirmed;
                    next.due_at_ms = None;
                    Ok(transition(next))
                }
                Verification::Absent => Ok(self.retry_or_die(policy, now_ms, None, rng)),
                Verification::Unknown => {
                    let mut t = self.retry_or_die(policy, now_ms, None, rng);
                    if t.progress.state == S::Retrying && resend_may_duplicate {
                        t.progress.possible_duplicate = true;
                    }
                    Ok(t)
                }
            },
            (state, Event::Cancel) if !state.is_final() => {
                next.state = S::Cancelled;
                next.due_at_ms = None;
                Ok(transition(next))
            }
            // The operator takes responsibility for trying again: a new
            // attempt budget on top of what was used, and no deadline. A
            // cancelled delivery too: the operator changed their mind.
            (S::Failed | S::Dead | S::Cancelled, Event::OperatorRetry) => {
                Ok(transition(self.operator_retry(policy, now_ms)?))
            }
            _ => Err(refuse()),
        }
    }

    /// [`Event::Lease`] at `now_ms`: `Sending`, or `Dead` past the deadline.
    pub fn leased(&self, now_ms: i64) -> Result<DeliveryProgress, TransitionError> {
        self.apply_without_policy(Event::Lease, now_ms)
    }

    /// [`Event::OperatorRetry`] at `now_ms`.
    pub fn operator_retry(
        &self,
        policy: &RetryPolicy,
        now_ms: i64,
    ) -> Result<DeliveryProgress, TransitionError> {
        if !self.state.is_retryable_by_operator() {
            return Err(TransitionError {
                state: self.state,
                event: Event::OperatorRetry,
            });
        }
        let mut next = self.clone();
        next.state = DeliveryState::Pending;
        next.due_at_ms = Some(now_ms);
        next.attempts_max = self
            .attempts_made
            .saturating_add(policy.attempts_max.max(1));
        next.deadline_at_ms = None;
        Ok(next)
    }

    /// [`Event::Cancel`].
    pub fn cancelled(&self) -> Result<DeliveryProgress, TransitionError> {
        self.apply_without_policy(Event::Cancel, 0)
    }

    /// [`Event::ThreadReady`] at `now_ms`.
    pub fn thread_ready(&self, now_ms: i64) -> Result<DeliveryProgress, TransitionError> {
        self.apply_without_policy(Event::ThreadReady, now_ms)
    }

    /// [`Event::Interrupted`] at `now_ms`.
    pub fn interrupted(&self, now_ms: i64) -> Result<DeliveryProgress, TransitionError> {
        self.apply_without_policy(Event::Interrupted, now_ms)
    }

    fn apply_without_policy(
        &self,
        event: Event,
        now_ms: i64,
    ) -> Result<DeliveryProgress, TransitionError> {
        // These three events read neither the policy nor the random source.
        struct NoRandomness;
        impl rand::RngCore for NoRandomness {
            fn next_u32(&mut self) -> u32 {
                unreachable!("lease, thread-ready and interrupted draw no random numbers")
            }
            fn next_u64(&mut self) -> u64 {
                unreachable!("lease, thread-ready and interrupted draw no random numbers")
            }
            fn fill_bytes(&mut self, _: &mut [u8]) {
                unreachable!("lease, thread-ready and interrupted draw no random numbers")
            }
        }
        self.apply(event, &RetryPolicy::default(), now_ms, &mut NoRandomness)
            .map(|t| t.progress)
    }

    fn retry_or_die(
        &self,
        policy: &RetryPolicy,
        now_ms: i64,
        retry_after_ms: Option<u64>,
        rng: &mut impl Rng,
    ) -> Transition {
        let mut next = self.clone();
        if self.attempts_made >= self.attempts_max {
            next.state = DeliveryState::Dead;
            next.due_at_ms = None;
            return Transition {
                progress: next,
                retry_delay_ms: None,
                pause_destination_ms: None,
            };
        }
        let delay_ms = retry_delay_ms(policy, self.attempts_made, retry_after_ms, rng);
        let due_at_ms = now_ms.saturating_add(delay_ms as i64);
        if self
            .deadline_at_ms
            .is_some_and(|deadline| due_at_ms > deadline)
        {
            next.state = DeliveryState::Dead;
            next.due_at_ms = None;
            return Transition {
                progress: next,
                retry_delay_ms: None,
                pause_destination_ms: None,
            };
        }
        next.state = DeliveryState::Retrying;
        next.due_at_ms = Some(due_at_ms);
        Transition {
            progress: next,
            retry_delay_ms: Some(delay_ms),
            pause_destination_ms: None,
        }
    }

    /// The state as an operator reads it: "retrying 2/8", "confirmed".
    pub fn summary(&self) -> String {
        match self.state {
            DeliveryState::Retrying | DeliveryState::Sending | DeliveryState::Verifying => {
                format!(
                    "{} {}/{}",
                    self.state.as_str(),
                    self.attempts_made,
                    self.attempts_max
                )
            }
            state => state.as_str().to_owned(),
        }
    }
}

/// A broadcast's status is derived from its deliveries, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BroadcastStatus {
    /// Some delivery is not final yet.
    Delivering,
    /// Every delivery is confirmed.
    Converged,
    /// Every delivery is final, and some are failed, dead or cancelled.
    Partial,
}

impl BroadcastStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BroadcastStatus::Delivering => "delivering",
            BroadcastStatus::Converged => "converged",
            BroadcastStatus::Partial => "partial",
        }
    }
}

pub fn derive_status(states: impl IntoIterator<Item = DeliveryState>) -> BroadcastStatus {
    let mut all_confirmed = true;
    for state in states {
        if !state.is_final() {
            return BroadcastStatus::Delivering;
        }
        all_confirmed &= state == DeliveryState::Confirmed;
    }
    if all_confirmed {
        BroadcastStatus::Converged
    } else {
        BroadcastStatus::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn event_strategy() -> impl Strategy<Value = Event> {
        let class = prop_oneof![
            Just(OutcomeClass::Success),
            Just(OutcomeClass::Retryable),
            Just(OutcomeClass::RateLimited),
            Just(OutcomeClass::Ambiguous),
            Just(OutcomeClass::Permanent),
        ];
        let verification = prop_oneof![
            Just(Verification::Found),
            Just(Verification::Absent),
            Just(Verification::Unknown),
        ];
        prop_oneof![
            1 => Just(Event::ThreadReady),
            4 => Just(Event::Lease),
            6 => (class, proptest::option::of(0u64..10_000_000))
                .prop_map(|(class, retry_after_ms)| Event::Finished { class, retry_after_ms }),
            2 => (verification, any::<bool>()).prop_map(|(result, resend_may_duplicate)| {
                Event::Verified { result, resend_may_duplicate }
            }),
            1 => Just(Event::Interrupted),
            1 => Just(Event::Cancel),
            1 => Just(Event::OperatorRetry),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_over_random_event_sequences(
            waiting in any::<bool>(),
            attempts_max in 1u32..10,
            base_ms in 1u64..5_000,
            cap_ms in 1u64..100_000,
            deadline_ms in proptest::option::of(0u64..1_000_000),
            events in proptest::collection::vec((event_strategy(), 0i64..100_000), 1..80),
            seed in any::<u64>(),
        ) {
            let policy = RetryPolicy { attempts_max, base_ms, cap_ms, deadline_ms };
            let mut rng = StdRng::seed_from_u64(seed);
            let mut now_ms = 1_700_000_000_000i64;
            // The idempotency key is not part of `DeliveryProgress`: no
            // transition can reach it. The store keeps it in a column that no
            // UPDATE names, and the integration tests check at the mock that
            // every attempt of a delivery carried the same key.
            let mut progress = DeliveryProgress::new(&policy, waiting, now_ms);
            for (event, step_ms) in events {
                now_ms += step_ms;
                let before = progress.clone();
                match progress.apply(event, &policy, now_ms, &mut rng) {
                    Err(err) => {
                        prop_assert_eq!(err.state, before.state);
                        if event == Event::OperatorRetry {
                            prop_assert!(!before.state.is_retryable_by_operator());
                        }
                    }
                    Ok(t) => {
                        let after = t.progress;
                        if before.state.is_final() {
                            prop_assert_eq!(event, Event::OperatorRetry,
                                "final state {:?} changed by {:?}", before.state, event);
                            prop_assert_ne!(before.state, DeliveryState::Confirmed);
                            prop_assert_eq!(after.state, DeliveryState::Pending);
                            prop_assert!(after.deadline_at_ms.is_none());
                            prop_assert!(after.attempts_max > before.attempts_made);
                        }
                        prop_assert!(after.attempts_made >= before.attempts_made);
                        prop_assert!(after.attempts_max >= before.attempts_max);
                        prop_assert!(after.attempts_made <= after.attempts_max);
                        if let Some(delay) = t.retry_delay_ms {
                            prop_assert!(delay <= cap_ms);
                        }
                        if let Some(pause) = t.pause_destination_ms {
                            prop_assert!(pause <= cap_ms);
                        }
                        if after.state == DeliveryState::Dead && event == Event::Lease {
                            prop_assert!(after.deadline_at_ms.is_some_and(|d| now_ms > d));
                        }
                        if after.state == DeliveryState::Sending {
                            prop_assert_eq!(after.attempts_made, before.attempts_made + 1);
                        } else {
                            prop_assert_eq!(after.attempts_made, before.attempts_made);
                        }
                        let due_states = [DeliveryState::Pending, DeliveryState::Retrying, DeliveryState::Verifying];
                        prop_assert_eq!(after.due_at_ms.is_some(), due_states.contains(&after.state));
                        if before.possible_duplicate {
                            prop_assert!(after.possible_duplicate);
                        }
                        progress = after;
                    }
                }
            }
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(3)
    }

    #[test]
    fn sending_then_crash_goes_to_verifying_never_pending() {
        let policy = RetryPolicy::default();
        let p = DeliveryProgress::new(&policy, false, 0);
        let p = p
            .apply(Event::Lease, &policy, 1, &mut rng())
            .unwrap()
            .progress;
        let p = p
            .apply(Event::Interrupted, &policy, 2, &mut rng())
            .unwrap()
            .progress;
        assert_eq!(p.state, DeliveryState::Verifying);
        assert_eq!(p.attempts_made, 1);
    }

    #[test]
    fn retries_until_attempts_are_exhausted_then_dead() {
        let policy = RetryPolicy {
            attempts_max: 3,
            ..RetryPolicy::default()
        };
        let mut p = DeliveryProgress::new(&policy, false, 0);
        let fail = Event::Finished {
            class: OutcomeClass::Retryable,
            retry_after_ms: None,
        };
        for expected in [
            DeliveryState::Retrying,
            DeliveryState::Retrying,
            DeliveryState::Dead,
        ] {
            p = p
                .apply(Event::Lease, &policy, 0, &mut rng())
                .unwrap()
                .progress;
            p = p.apply(fail, &policy, 0, &mut rng()).unwrap().progress;
            assert_eq!(p.state, expected);
        }
        assert_eq!(p.summary(), "dead");
        let p = p
            .apply(Event::OperatorRetry, &policy, 0, &mut rng())
            .unwrap()
            .progress;
        assert_eq!(
            (p.state, p.attempts_made, p.attempts_max),
            (DeliveryState::Pending, 3, 6)
        );
    }

    #[test]
    fn a_cancelled_delivery_can_be_retried_but_a_confirmed_one_cannot() {
        let policy = RetryPolicy {
            attempts_max: 3,
            deadline_ms: Some(1_000),
            ..RetryPolicy::default()
        };
        let p = DeliveryProgress::new(&policy, false, 0);
        let cancelled = p.cancelled().unwrap();
        assert_eq!(cancelled.state, DeliveryState::Cancelled);
        let again = cancelled
            .apply(Event::OperatorRetry, &policy, 5_000, &mut rng())
            .unwrap()
            .progress;
        assert_eq!(
            (
                again.state,
                again.due_at_ms,
                again.deadline_at_ms,
                again.attempts_max
            ),
            (DeliveryState::Pending, Some(5_000), None, 3)
        );
        let sent = p.leased(1).unwrap();
        let confirmed = sent
            .apply(
                Event::Finished {
                    class: OutcomeClass::Success,
                    retry_after_ms: None,
                },
                &policy,
                2,
                &mut rng(),
            )
            .unwrap()
            .progress;
        assert!(confirmed.operator_retry(&policy, 3).is_err());
    }

    #[test]
    fn rate_limit_pauses_the_destination_for_retry_after_clamped_to_cap() {
        let policy = RetryPolicy {
            cap_ms: 60_000,
            ..RetryPolicy::default()
        };
        let p = DeliveryProgress::new(&policy, false, 0);
        let p = p
            .apply(Event::Lease, &policy, 0, &mut rng())
            .unwrap()
            .progress;
        let t = p
            .apply(
                Event::Finished {
                    class: OutcomeClass::RateLimited,
                    retry_after_ms: Some(2_000),
                },
                &policy,
                10,
                &mut rng(),
            )
            .unwrap();
        assert_eq!(t.pause_destination_ms, Some(2_000));
        assert_eq!(t.progress.due_at_ms, Some(2_010));
        assert_eq!(t.progress.summary(), "retrying 1/8");
        let t = p
            .apply(
                Event::Finished {
                    class: OutcomeClass::RateLimited,
                    retry_after_ms: Some(3_600_000),
                },
                &policy,
                10,
                &mut rng(),
            )
            .unwrap();
        assert_eq!(t.pause_destination_ms, Some(60_000));
    }

    #[test]
    fn a_delivery_past_its_deadline_is_dead_instead_of_sent() {
        let policy = RetryPolicy {
            deadline_ms: Some(60_000),
            ..RetryPolicy::default()
        };
        let p = DeliveryProgress::new(&policy, false, 0);
        assert_eq!(p.leased(60_000).unwrap().state, DeliveryState::Sending);
        assert_eq!(p.leased(60_001).unwrap().state, DeliveryState::Dead);
    }

    #[test]
    fn derived_status() {
        use DeliveryState as S;
        assert_eq!(
            derive_status([S::Confirmed, S::Retrying]),
            BroadcastStatus::Delivering
        );
        assert_eq!(
            derive_status([S::Confirmed, S::Confirmed]),
            BroadcastStatus::Converged
        );
        assert_eq!(
            derive_status([S::Confirmed, S::Dead]),
            BroadcastStatus::Partial
        );
    }
}
