//! The destination's guards, in memory: an operator's pause (`Hold`), the
//! pause a 429 set, the circuit breaker and the token bucket. Each is
//! arithmetic under a short lock; the lane asks them what it may do now.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

use super::lane::Lane;
use crate::domain::OutcomeClass;

/// An operator's pause of a destination (`until_ms`, 0 when none), in
/// memory; the store holds it durably. Shared by the lanes a reload builds
/// for the same name, so a changed destination stays paused.
#[derive(Default)]
pub(super) struct Hold {
    pub(super) until_ms: AtomicI64,
    /// Woken at resume: attempts leased before the pause wait on it.
    pub(super) changed: Notify,
}

/// A destination's circuit breaker. Open: no attempt is made, deliveries
/// wait durably. After the cool-down one probe goes (half open); its success
/// closes the circuit, its failure opens it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open { until_ms: i64 },
    HalfOpen { probing: bool },
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

pub(super) struct Guard {
    pub(super) circuit: Circuit,
    /// Attempts in a row that failed in a way that says the destination is
    /// unwell (retryable, ambiguous); reset by a success.
    pub(super) failures_in_row: u32,
    /// Token bucket for `rate_per_sec`.
    pub(super) tokens: f64,
    pub(super) refilled_at_ms: i64,
}

/// What the lane may do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Up to this many attempts.
    Go(usize),
    /// Nothing before this instant (breaker open, bucket empty).
    WaitUntil(i64),
    /// Nothing until the probe in flight lands (it wakes the lane).
    WaitForProbe,
}

impl Lane {
    pub(super) fn pause_until(&self, until_ms: i64) {
        self.paused_until_ms.fetch_max(until_ms, Ordering::SeqCst);
    }

    /// Until when nothing may be sent: a 429's pause or an operator's.
    pub(super) fn paused_until(&self) -> i64 {
        self.paused_until_ms
            .load(Ordering::SeqCst)
            .max(self.hold.until_ms.load(Ordering::SeqCst))
    }

    /// How many attempts may start now, at most `wanted`; takes their
    /// tokens (give back unused ones with `refund`).
    pub(super) fn admit(&self, now_ms: i64, wanted: usize) -> Admit {
        let isolation = &self.destination.isolation;
        let mut guard = self.guard.lock().expect("lane poisoned");
        let mut allowed = wanted;
        match guard.circuit {
            Circuit::Closed => {}
            Circuit::Open { until_ms } if now_ms < until_ms => return Admit::WaitUntil(until_ms),
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => allowed = 1,
            Circuit::HalfOpen { probing: true } => return Admit::WaitForProbe,
        }
        if let Some(rate) = isolation.rate_per_sec {
            let elapsed_ms = (now_ms - guard.refilled_at_ms).max(0) as f64;
            guard.tokens =
                (guard.tokens + elapsed_ms * rate / 1000.0).min(f64::from(isolation.rate_burst));
            guard.refilled_at_ms = now_ms;
            if guard.tokens < 1.0 {
                let wait_ms = ((1.0 - guard.tokens) * 1000.0 / rate).ceil() as i64;
                return Admit::WaitUntil(now_ms + wait_ms.max(1));
            }
            allowed = allowed.min(guard.tokens.floor() as usize);
            guard.tokens -= allowed as f64;
        }
        if guard.circuit != Circuit::Closed {
            guard.circuit = Circuit::HalfOpen { probing: true };
        }
        Admit::Go(allowed)
    }

    /// Gives back what `admit` granted and was not used.
    pub(super) fn refund(&self, unused: usize) {
        if unused == 0 {
            return;
        }
        let mut guard = self.guard.lock().expect("lane poisoned");
        if let Some(_rate) = self.destination.isolation.rate_per_sec {
            guard.tokens += unused as f64;
        }
        if guard.circuit == (Circuit::HalfOpen { probing: true }) {
            // The probe found nothing to send; the next due delivery probes.
            guard.circuit = Circuit::HalfOpen { probing: false };
        }
    }

    /// Feeds an attempt's outcome to the breaker. Returns true when the
    /// circuit changed (the lane should look again).
    pub(super) fn record_health(&self, class: Option<OutcomeClass>, now_ms: i64) -> bool {
        let isolation = &self.destination.isolation;
        let mut guard = self.guard.lock().expect("lane poisoned");
        let before = guard.circuit;
        match class {
            Some(OutcomeClass::Success) => {
                guard.failures_in_row = 0;
                guard.circuit = Circuit::Closed;
            }
            Some(OutcomeClass::Retryable | OutcomeClass::Ambiguous) => {
                guard.failures_in_row = guard.failures_in_row.saturating_add(1);
                let probe_failed = matches!(guard.circuit, Circuit::HalfOpen { .. });
                if probe_failed || guard.failures_in_row >= isolation.breaker_failures {
                    guard.circuit = Circuit::Open {
                        until_ms: now_ms + isolation.breaker_cooldown_ms as i64,
                    };
                }
            }
            // A rate limit pauses the lane by itself; a permanent failure is
            // about the message; a read-back says nothing of health.
            _ => {
                if let Circuit::HalfOpen { probing: true } = guard.circuit {
                    guard.circuit = Circuit::HalfOpen { probing: false };
                }
            }
        }
        if before != guard.circuit {
            tracing::warn!(destination = %self.destination.name, circuit = guard.circuit.as_str(),
                failures_in_row = guard.failures_in_row, "circuit breaker changed");
        }
        before != guard.circuit
    }
}
