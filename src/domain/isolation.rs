//! How herald protects a destination (and itself) from overload, and the
//! lease a node holds on a delivery: plain settings that the config file
//! fills in and the stores and the dispatcher read.

/// Failed attempts in a row that open a destination's circuit breaker.
pub const DEFAULT_BREAKER_FAILURES: u32 = 10;
/// How long an open breaker waits before it lets one probe through.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;
/// How long a node's lease on a delivery lasts (PostgreSQL only): comfortably
/// longer than any attempt (the request timeout is at most half of it,
/// enforced at start), so leases are not renewed.
pub const DEFAULT_LEASE_MS: u64 = 60_000;

/// How herald protects a destination (and itself) from overload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Isolation {
    /// Requests per second at most (token bucket); unlimited when absent.
    pub rate_per_sec: Option<f64>,
    /// Requests the bucket allows at once after a quiet spell.
    pub rate_burst: u32,
    /// Failed attempts in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub breaker_cooldown_ms: u64,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation {
            rate_per_sec: None,
            rate_burst: 1,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_cooldown_ms: DEFAULT_BREAKER_COOLDOWN_MS,
        }
    }
}
