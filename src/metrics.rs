//! Counters for `/metrics` (Prometheus text format), kept as atomics on the
//! hot path and rendered on scrape.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::DeliveryState;

/// Attempt latency histogram bounds, in milliseconds.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

const OUTCOMES: [&str; 9] = [
    "success",
    "retryable",
    "rate_limited",
    "ambiguous",
    "permanent",
    "found",
    "absent",
    "unknown",
    "interrupted",
];
const FINAL_STATES: [DeliveryState; 4] = [
    DeliveryState::Confirmed,
    DeliveryState::Failed,
    DeliveryState::Dead,
    DeliveryState::Cancelled,
];

/// One destination's counters.
#[derive(Default)]
pub struct DestinationMetrics {
    attempts: [AtomicU64; OUTCOMES.len()],
    finals: [AtomicU64; FINAL_STATES.len()],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
    /// Outcomes refused because a newer lease owned the delivery.
    pub stale_outcomes: AtomicU64,
}

impl DestinationMetrics {
    pub fn record_attempt(&self, outcome: &str, latency_ms: u64) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.attempts[i].fetch_add(1, Ordering::Relaxed);
        }
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&self.latency_buckets) {
            if latency_ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Ordering::Relaxed);
    }

    pub fn record_final(&self, state: DeliveryState) {
        if let Some(i) = FINAL_STATES.iter().position(|s| *s == state) {
            self.finals[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Appends every destination's series, one metric family at a time (the
/// text format wants each family's samples together).
pub fn render_destinations(list: &[(&str, &DestinationMetrics)], out: &mut String) {
    help(
        out,
        "herald_attempts_total",
        "counter",
        "Attempts and verifications, by destination and outcome.",
    );
    for (d, m) in list {
        for (outcome, count) in OUTCOMES.iter().zip(&m.attempts) {
            let _ = writeln!(
                out,
                "herald_attempts_total{{destination=\"{d}\",outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
    }
    help(
        out,
        "herald_deliveries_final_total",
        "counter",
        "Deliveries that reached a final state, by destination and state.",
    );
    for (d, m) in list {
        for (state, count) in FINAL_STATES.iter().zip(&m.finals) {
            let _ = writeln!(
                out,
                "herald_deliveries_final_total{{destination=\"{d}\",state=\"{}\"}} {}",
                state.as_str(),
                count.load(Ordering::Relaxed)
            );
        }
    }
    help(
        out,
        "herald_attempt_duration_seconds",
        "histogram",
        "Duration of one attempt or verification.",
    );
    for (d, m) in list {
        for (bound, bucket) in LATENCY_BUCKETS_MS.iter().zip(&m.latency_buckets) {
            let _ = writeln!(
                out,
                "herald_attempt_duration_seconds_bucket{{destination=\"{d}\",le=\"{}\"}} {}",
                *bound as f64 / 1000.0,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = m.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "herald_attempt_duration_seconds_bucket{{destination=\"{d}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "herald_attempt_duration_seconds_count{{destination=\"{d}\"}} {count}"
        );
        let _ = writeln!(
            out,
            "herald_attempt_duration_seconds_sum{{destination=\"{d}\"}} {}",
            m.latency_sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
    }
    help(
        out,
        "herald_stale_outcomes_total",
        "counter",
        "Outcomes refused because a newer lease owned the delivery.",
    );
    for (d, m) in list {
        let _ = writeln!(
            out,
            "herald_stale_outcomes_total{{destination=\"{d}\"}} {}",
            m.stale_outcomes.load(Ordering::Relaxed)
        );
    }
}

/// A gauge family with one sample per destination.
pub fn render_gauge(out: &mut String, name: &str, text: &str, samples: &[(&str, f64)]) {
    help(out, name, "gauge", text);
    for (d, value) in samples {
        let _ = writeln!(out, "{name}{{destination=\"{d}\"}} {value}");
    }
}

/// A gauge without labels.
pub fn render_plain_gauge(out: &mut String, name: &str, text: &str, value: f64) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {value}");
}

/// A counter without labels.
pub fn render_counter(out: &mut String, name: &str, text: &str, value: u64) {
    help(out, name, "counter", text);
    let _ = writeln!(out, "{name} {value}");
}

/// A gauge without labels.
pub fn render_gauge_value(out: &mut String, name: &str, text: &str, value: f64) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {value}");
}
