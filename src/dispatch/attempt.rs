//! One attempt at one leased delivery: wait for a request slot and for
//! any pause to end, send it (or read it back after an ambiguous answer),
//! let the destination's guards and the operators' view know what it
//! answered, record the outcome through the store, and wake the lane when
//! something became due.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::lane::Lane;
use super::{IDLE_POLL_MS, RECORD_PAUSE_MS_MAX, RECORD_TRIES_MAX, STORE_ERROR_PAUSE_MS};
use crate::clock::now_ms;
use crate::domain::{DeliveryState, Event, OutcomeClass, Severity, Verification};
use crate::events::StateChange;
use crate::store::{
    AttemptKind, AttemptRecord, ClaimedDelivery, DeliveryUpdate, Store, UpdateResult,
};

/// The domain's answer to what happened; a refusal is a bug (the lease
/// guarantees the state), logged and left to the next start's recovery.
fn next_progress(
    delivery: &ClaimedDelivery,
    event: Event,
    policy: &crate::domain::RetryPolicy,
    now_ms: i64,
) -> Option<crate::domain::Transition> {
    match delivery
        .progress
        .apply(event, policy, now_ms, &mut rand::rng())
    {
        Ok(transition) => Some(transition),
        Err(error) => {
            tracing::error!(%error, delivery = delivery.delivery_id, "bug: the event does not apply to the leased delivery");
            None
        }
    }
}

/// An attempt, ready to spawn. Boxed: its future holds a whole HTTP
/// exchange, and moving it by value into the task (and within it) showed as
/// `memmove` in burst profiles; a box is moved as one pointer.
pub(super) fn attempt_task<S: Store>(
    store: &Arc<S>,
    lane: &Arc<Lane>,
    delivery: ClaimedDelivery,
    slot: OwnedSemaphorePermit,
) -> std::pin::Pin<Box<impl std::future::Future<Output = ()> + Send + 'static>> {
    Box::pin(run_attempt(store.clone(), lane.clone(), delivery, slot))
}

async fn run_attempt<S: Store>(
    store: Arc<S>,
    lane: Arc<Lane>,
    delivery: ClaimedDelivery,
    slot: OwnedSemaphorePermit,
) {
    let waiting_since_ms = now_ms();
    let Some(request) = take_request_slot(&lane, &delivery).await else {
        return;
    };
    wait_out_destination_pause(&lane, &delivery, waiting_since_ms).await;
    let started_at_ms = now_ms();
    let (update, pause_ms) = match delivery.progress.state {
        DeliveryState::Verifying => {
            let Some(update) = read_back(&lane, &delivery, started_at_ms).await else {
                return;
            };
            (update, None)
        }
        DeliveryState::Sending => {
            let Some(sent) = send(&lane, &delivery, started_at_ms).await else {
                return;
            };
            sent
        }
        state => {
            tracing::error!(
                state = state.as_str(),
                "bug: claimed a delivery that is neither sending nor verifying"
            );
            return;
        }
    };
    let circuit_changed = report_answer(&lane, &delivery, &update, pause_ms);
    // The destination has answered: the request slot goes to the next
    // leased delivery while this outcome is committed, and the lane slot to
    // the next delivery the lane may lease. The lease itself stays in the
    // database until the outcome is on disk, so nothing else can take the
    // delivery meanwhile; what waits for the disk is bounded by the
    // recording slots (with none free, the lane slot is kept until one is).
    drop(request);
    let _recording = lane.recording.clone().acquire_owned().await.ok();
    drop(slot);
    let result = record_outcome(store.as_ref(), &delivery, &update).await;
    announce_recorded(&lane, &delivery, &update, result);
    wake_lane_when_something_is_due(&lane, &delivery, &update, result, circuit_changed);
}

/// At most `concurrency` requests at the destination; the deliveries
/// leased ahead wait here, in claim order. A P1 takes whichever of its
/// own slot and the shared ones frees first.
async fn take_request_slot(
    lane: &Lane,
    delivery: &ClaimedDelivery,
) -> Option<OwnedSemaphorePermit> {
    let request = if delivery.message.severity() == Severity::P1 {
        tokio::select! {
            permit = lane.requests.clone().acquire_owned() => permit,
            permit = lane.urgent_request.clone().acquire_owned() => permit,
        }
    } else {
        lane.requests.clone().acquire_owned().await
    };
    let Ok(request) = request else {
        tracing::error!(destination = %lane.destination.name, "bug: the request slots were closed");
        return None;
    };
    Some(request)
}

/// A 429 may have paused the destination after this delivery was leased
/// (a claim or a hand-off racing the answer): nothing leaves before the
/// pause is over, unless holding the lease that long would let it
/// expire (then the destination's own answer decides).
async fn wait_out_destination_pause(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    waiting_since_ms: i64,
) {
    loop {
        let (until, now) = (lane.paused_until(), now_ms());
        if until <= now {
            break;
        }
        let mut wait_ms = (until - now).min(IDLE_POLL_MS);
        if let Some(hold_ms) = lane.lease_hold_max_ms {
            let left_ms = hold_ms as i64 - (now - waiting_since_ms);
            if left_ms <= 0 {
                tracing::warn!(destination = %lane.destination.name, delivery = delivery.delivery_id,
                    "the destination's pause outlasts half the lease; sending rather than losing the lease");
                break;
            }
            wait_ms = wait_ms.min(left_ms);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            _ = lane.hold.changed.notified() => {}
        }
    }
}

/// Reads back a delivery whose send had an ambiguous outcome: the update
/// that records what the destination holds. None when the domain refuses
/// the event (a bug, logged).
async fn read_back(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    started_at_ms: i64,
) -> Option<DeliveryUpdate> {
    let policy = lane.destination.policy;
    let report = lane.connector.verify(delivery).await;
    let finished_at_ms = now_ms();
    let event = Event::Verified {
        result: report.result,
        resend_may_duplicate: report.resend_may_duplicate,
    };
    let transition = next_progress(delivery, event, &policy, finished_at_ms)?;
    let outcome = match report.result {
        Verification::Found => "found",
        Verification::Absent => "absent",
        Verification::Unknown => "unknown",
    };
    // Keep why the outcome was unknown (the first clause of the
    // previous error) next to what the read-back found.
    let last_error = match (&report.error, &delivery.last_error) {
        (Some(now), Some(before)) => {
            let why = before.split(": ").next().unwrap_or(before);
            Some(format!("{why}; {now}"))
        }
        (now, before) => now.clone().or_else(|| before.clone()),
    };
    Some(DeliveryUpdate {
        delivery_id: delivery.delivery_id,
        lease_epoch: delivery.lease_epoch,
        expected_state: DeliveryState::Verifying,
        progress: transition.progress,
        last_error,
        attempt: AttemptRecord {
            number: delivery.progress.attempts_made,
            kind: AttemptKind::Verify,
            started_at_ms,
            finished_at_ms,
            outcome: outcome.to_owned(),
            http_status: report.http_status,
            excerpt: None,
            error: report.error,
        },
        now_ms: finished_at_ms,
        remote_ref: report.remote_ref,
        pause_destination_ms: None,
        in_thread: delivery.message.thread().is_some(),
    })
}

/// Sends the delivery: the update that records the destination's answer,
/// and how long to pause the destination (a 429, or a success that says
/// the destination's bucket is empty). None when the domain refuses the
/// event (a bug, logged).
async fn send(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    started_at_ms: i64,
) -> Option<(DeliveryUpdate, Option<u64>)> {
    let policy = lane.destination.policy;
    let outcome = lane.connector.send(delivery, started_at_ms).await;
    let finished_at_ms = now_ms();
    let event = Event::Finished {
        class: outcome.class,
        retry_after_ms: outcome.retry_after_ms,
    };
    let transition = next_progress(delivery, event, &policy, finished_at_ms)?;
    // A success can carry the destination's "wait before the next
    // one" (an empty rate-limit bucket): pause, within the cap.
    let pace_ms = match outcome.class {
        OutcomeClass::Success => outcome.retry_after_ms.map(|ms| ms.min(policy.cap_ms)),
        _ => None,
    };
    let pause_ms = transition.pause_destination_ms.or(pace_ms);
    let update = DeliveryUpdate {
        delivery_id: delivery.delivery_id,
        lease_epoch: delivery.lease_epoch,
        expected_state: DeliveryState::Sending,
        progress: transition.progress,
        last_error: outcome.error.clone(),
        attempt: AttemptRecord {
            number: delivery.progress.attempts_made,
            kind: AttemptKind::Send,
            started_at_ms,
            finished_at_ms,
            outcome: outcome.class.as_str().to_owned(),
            http_status: outcome.http_status,
            excerpt: outcome.excerpt,
            error: outcome.error,
        },
        now_ms: finished_at_ms,
        remote_ref: outcome.remote_ref,
        pause_destination_ms: pause_ms,
        in_thread: delivery.message.thread().is_some(),
    };
    Some((update, pause_ms))
}

/// What the destination answered reaches its pause, the breaker, the
/// counters and the operators' view now, before the outcome is committed.
/// Returns true when the circuit changed.
fn report_answer(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    update: &DeliveryUpdate,
    pause_ms: Option<u64>,
) -> bool {
    if let Some(pause_ms) = pause_ms {
        lane.pause_until(update.now_ms.saturating_add(pause_ms as i64));
        tracing::warn!(destination = %lane.destination.name, pause_ms, "destination rate limited; pausing it");
    }
    // Each attempt at debug; the state it leads to, once committed, at
    // info (in `announce_recorded`): one line per state change.
    tracing::debug!(
        broadcast = %delivery.broadcast_id,
        destination = %delivery.destination,
        attempt = update.attempt.number,
        kind = update.attempt.kind.as_str(),
        outcome = %update.attempt.outcome,
        http_status = update.attempt.http_status,
        latency_ms = update.attempt.finished_at_ms - update.attempt.started_at_ms,
        state = %update.progress.summary(),
        error = update.attempt.error.as_deref().unwrap_or(""),
        "attempt finished"
    );
    let latency_ms = (update.attempt.finished_at_ms - update.attempt.started_at_ms).max(0) as u64;
    lane.metrics
        .record_attempt(&update.attempt.outcome, latency_ms);
    // A read-back that found the message is a success for health: the
    // destination answers and has it (without this, a timeout that had
    // landed left "1 failure in a row" on a healthy destination).
    let health_class = match (update.attempt.kind, update.attempt.outcome.as_str()) {
        (AttemptKind::Verify, "found") => Some(OutcomeClass::Success),
        _ => update.attempt.outcome_class(),
    };
    let circuit_changed = lane.record_health(health_class, update.now_ms);
    if let Some(error) = &update.attempt.error {
        *lane.last_error.lock().expect("lane poisoned") = Some((error.clone(), update.now_ms));
    }
    circuit_changed
}

/// Records the outcome through the store, trying again on a store error
/// for about ten minutes. None when it could not: the delivery stays
/// leased and is verified at the next start.
async fn record_outcome<S: Store>(
    store: &S,
    delivery: &ClaimedDelivery,
    update: &DeliveryUpdate,
) -> Option<UpdateResult> {
    let mut tries = 0;
    loop {
        tries += 1;
        match store.update_delivery(update.clone()).await {
            Ok(result) => break Some(result),
            Err(error) if tries < RECORD_TRIES_MAX => {
                tracing::error!(%error, delivery = delivery.delivery_id, "cannot record an outcome; trying again");
                let pause_ms = (STORE_ERROR_PAUSE_MS << tries.min(4)).min(RECORD_PAUSE_MS_MAX);
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
            Err(error) => {
                tracing::error!(%error, delivery = delivery.delivery_id,
                    "cannot record an outcome; the delivery stays leased and is verified at the next start");
                break None;
            }
        }
    }
}

/// Once the outcome is on disk: counts a final state, logs the state
/// change and publishes it to the event stream; or counts an outcome that
/// came too late (the delivery was cancelled or leased again).
fn announce_recorded(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    update: &DeliveryUpdate,
    result: Option<UpdateResult>,
) {
    let next_state = update.progress.state;
    match result {
        Some(UpdateResult::Applied { .. }) => {
            if next_state.is_final() {
                lane.metrics.record_final(next_state);
            }
            tracing::info!(
                broadcast = %delivery.broadcast_id,
                destination = %delivery.destination,
                from = delivery.progress.state.as_str(),
                state = %update.progress.summary(),
                attempt = update.attempt.number,
                outcome = %update.attempt.outcome,
                error = update.attempt.error.as_deref().unwrap_or(""),
                "delivery state changed"
            );
            lane.events.publish(|| StateChange {
                broadcast_id: delivery.broadcast_id.clone(),
                destination: delivery.destination.clone(),
                progress: update.progress.clone(),
                last_error: update.last_error.clone(),
                last_http_status: update.attempt.http_status,
                at_ms: update.now_ms,
            });
        }
        Some(UpdateResult::Stale) => {
            lane.metrics.stale_outcomes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(broadcast = %delivery.broadcast_id, destination = %delivery.destination,
                "outcome not recorded: the delivery was cancelled or leased again meanwhile");
        }
        None => {}
    }
}

/// A retry or a verification was scheduled, or the next delivery of a
/// thread became pending, or the circuit changed: let the lane recompute
/// when to look again.
fn wake_lane_when_something_is_due(
    lane: &Lane,
    delivery: &ClaimedDelivery,
    update: &DeliveryUpdate,
    result: Option<UpdateResult>,
    circuit_changed: bool,
) {
    let promoted = matches!(
        result,
        Some(UpdateResult::Applied {
            promoted_next_in_thread: true
        })
    );
    let rescheduled = matches!(
        update.progress.state,
        DeliveryState::Retrying | DeliveryState::Verifying
    );
    if circuit_changed || promoted || rescheduled {
        // What is due now may be a P1: this one again, or a thread's next
        // one of any severity.
        let may_hold_p1 =
            circuit_changed || promoted || delivery.message.severity() == Severity::P1;
        lane.wake(may_hold_p1);
    }
}
