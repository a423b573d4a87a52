//! The shared destination state in `destination_state`: a 429's pause, the
//! circuit breaker, the token bucket and the operator's pause, read and
//! written in the claim's and the outcome's own transactions.

use super::*;

/// A destination's shared condition, as stored.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct SharedGuard {
    pub(super) paused_until_ms: i64,
    pub(super) circuit: String,
    pub(super) circuit_until_ms: i64,
    pub(super) failures_in_row: i32,
    pub(super) tokens: Option<f64>,
    pub(super) tokens_at_ms: i64,
    /// An operator's pause; read only (written by pause and resume).
    pub(super) held_until_ms: i64,
}

impl SharedGuard {
    pub(super) fn from_row(row: &Row) -> Result<SharedGuard, StoreError> {
        Ok(SharedGuard {
            paused_until_ms: row.try_get(0)?,
            circuit: row.try_get(1)?,
            circuit_until_ms: row.try_get(2)?,
            failures_in_row: row.try_get(3)?,
            tokens: row.try_get(4)?,
            tokens_at_ms: row.try_get(5)?,
            held_until_ms: row.try_get(6)?,
        })
    }

    /// How many attempts may start now (at most `wanted`), or until when
    /// nothing may. Takes the tokens and the probe permission granted.
    pub(super) fn admit(
        &mut self,
        isolation: &Isolation,
        wanted: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<usize, i64> {
        if self.paused_until_ms > now_ms {
            return Err(self.paused_until_ms);
        }
        if self.held_until_ms > now_ms {
            return Err(self.held_until_ms);
        }
        let mut allowed = wanted;
        let mut probe = false;
        match self.circuit.as_str() {
            "open" if now_ms < self.circuit_until_ms => return Err(self.circuit_until_ms),
            // A probe is out; its permission lapses with its lease.
            "half_open" if now_ms < self.circuit_until_ms => return Err(self.circuit_until_ms),
            "open" | "half_open" => {
                allowed = 1;
                probe = true;
            }
            _ => {}
        }
        if let Some(rate) = isolation.rate_per_sec {
            let burst = f64::from(isolation.rate_burst);
            let elapsed_ms = (now_ms - self.tokens_at_ms).max(0) as f64;
            let tokens = (self.tokens.unwrap_or(burst) + elapsed_ms * rate / 1000.0).min(burst);
            self.tokens = Some(tokens);
            self.tokens_at_ms = now_ms;
            if tokens < 1.0 {
                let wait_ms = ((1.0 - tokens) * 1000.0 / rate).ceil() as i64;
                return Err(now_ms + wait_ms.max(1));
            }
            allowed = allowed.min(tokens.floor() as usize);
        }
        if probe {
            self.circuit = "half_open".into();
            self.circuit_until_ms = now_ms + lease_ms;
        }
        Ok(allowed)
    }

    /// Charges `used` of the granted attempts; a probe that found nothing
    /// to send gives its permission back.
    pub(super) fn charge(&mut self, isolation: &Isolation, used: usize) {
        if isolation.rate_per_sec.is_some() {
            self.tokens = Some(self.tokens.unwrap_or(0.0) - used as f64);
        }
        if used == 0 && self.circuit == "half_open" {
            self.circuit_until_ms = 0;
        }
    }

    /// Feeds an outcome to the breaker (and a 429 to the pause).
    pub(super) fn record(
        &mut self,
        isolation: &Isolation,
        class: Option<OutcomeClass>,
        pause_until_ms: Option<i64>,
        now_ms: i64,
    ) {
        if let Some(until) = pause_until_ms {
            self.paused_until_ms = self.paused_until_ms.max(until);
        }
        match class {
            Some(OutcomeClass::Success) => {
                self.failures_in_row = 0;
                self.circuit = "closed".into();
                self.circuit_until_ms = 0;
            }
            Some(OutcomeClass::Retryable | OutcomeClass::Ambiguous) => {
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let probe_failed = self.circuit == "half_open";
                if probe_failed || self.failures_in_row as u32 >= isolation.breaker_failures {
                    self.circuit = "open".into();
                    self.circuit_until_ms = now_ms + isolation.breaker_cooldown_ms as i64;
                }
            }
            _ => {
                if self.circuit == "half_open" {
                    self.circuit_until_ms = 0;
                }
            }
        }
    }
}

pub(super) async fn read_guard(
    tx: &mut Tx<'_>,
    destination: &str,
    for_update: bool,
) -> Result<Option<SharedGuard>, StoreError> {
    macro_rules! select_guard {
        () => {
            "SELECT paused_until_ms, circuit, circuit_until_ms, failures_in_row, tokens, tokens_at_ms,
                 held_until_ms
             FROM destination_state WHERE destination = $1"
        };
    }
    let sql = if for_update {
        concat!(select_guard!(), " FOR UPDATE")
    } else {
        select_guard!()
    };
    match tx.query_opt(sql, &[&destination]).await? {
        Some(row) => Ok(Some(SharedGuard::from_row(&row)?)),
        None => Ok(None),
    }
}

/// After only successes: closes the circuit and clears the failure count
/// of those of `destinations` that were unwell, and returns them. It
/// changes nothing, and locks no row, for a healthy destination; the index
/// scan visits the names in order (the guards' lock order).
pub(super) async fn reset_guards(
    tx: &mut Tx<'_>,
    destinations: &[&str],
) -> Result<Vec<String>, StoreError> {
    tx.query(
        "UPDATE destination_state SET failures_in_row = 0, circuit = 'closed',
             circuit_until_ms = 0
         WHERE destination = ANY($1) AND (failures_in_row <> 0 OR circuit <> 'closed')
         RETURNING destination",
        &[&destinations],
    )
    .await?
    .iter()
    .map(|row| Ok(row.try_get(0)?))
    .collect()
}

pub(super) async fn write_guard(
    tx: &mut Tx<'_>,
    destination: &str,
    guard: &SharedGuard,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO destination_state (destination, paused_until_ms, circuit, circuit_until_ms,
             failures_in_row, tokens, tokens_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (destination) DO UPDATE SET paused_until_ms = $2, circuit = $3,
             circuit_until_ms = $4, failures_in_row = $5, tokens = $6, tokens_at_ms = $7",
        &[
            &destination,
            &guard.paused_until_ms,
            &guard.circuit,
            &guard.circuit_until_ms,
            &guard.failures_in_row,
            &guard.tokens,
            &guard.tokens_at_ms,
        ],
    )
    .await?;
    Ok(())
}
