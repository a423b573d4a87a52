//! A destination's lane: it leases that destination's due deliveries in
//! batches (or takes them handed off at insert), starts one attempt task
//! per delivery within its slots, and at a reload or shutdown lets its
//! attempts finish before it goes.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::attempt::attempt_task;
use super::guard::{Admit, Guard, Hold};
use super::{CLAIM_BATCH_MAX, IDLE_POLL_MS, SHUTDOWN_DRAIN_MS, STORE_ERROR_PAUSE_MS};
use crate::clock::now_ms;
use crate::config::Destination;
use crate::connector::Connector;
use crate::events::{EventBus, StateChange};
use crate::metrics::DestinationMetrics;
use crate::store::{ClaimedDelivery, Store};

pub(super) struct Lane {
    pub(super) destination: Destination,
    /// Set when a reload removed or replaced this lane (or at shutdown): it
    /// claims nothing more, and goes once its attempts have finished.
    pub(super) stop: watch::Sender<bool>,
    pub(super) hold: Arc<Hold>,
    pub(super) connector: Connector,
    pub(super) wake: Notify,
    /// New work that may hold a P1: with every slot busy, it is worth a
    /// claim for the slot reserved for P1s. Routine work (no P1) does not
    /// wake this, so a burst of it costs no empty urgent claims.
    pub(super) urgent_wake: Notify,
    pub(super) paused_until_ms: AtomicI64,
    /// How long an attempt may wait out a pause holding its lease.
    pub(super) lease_hold_max_ms: Option<u64>,
    /// Deliveries the lane holds leased that have not had their answer: a
    /// slot is taken at claim (or at insert, for a hand-off) and given back
    /// when the destination has answered (the delivery then waits for its
    /// outcome's commit on a `recording` slot). `leased_max` of them, a few
    /// per request slot (`leased_per_request_slot`), so the next requests
    /// are already leased when a request slot frees, and a leased delivery's
    /// request leaves well within its lease.
    pub(super) slots: Arc<Semaphore>,
    /// The size of `slots` and of `recording`.
    pub(super) leased_max: u32,
    /// Deliveries whose destination has answered, waiting for their
    /// outcome's commit (`leased_max` at most). Apart
    /// from `slots`, so a commit's wait does not keep the lane from leasing
    /// the next deliveries: in a burst on PostgreSQL the outcomes waiting
    /// for their commit held most lane slots, so most new deliveries were
    /// left to a claim (a transaction and a row version each) instead of
    /// being leased at insert.
    pub(super) recording: Arc<Semaphore>,
    /// One more slot, used only by P1 deliveries when `slots` are all busy.
    pub(super) urgent_slot: Arc<Semaphore>,
    /// Requests at the destination (`concurrency`): taken by an attempt
    /// just before its request leaves, given back when the destination has
    /// answered, in the order attempts asked for them.
    pub(super) requests: Arc<Semaphore>,
    /// One more request, for P1s only: a P1 never queues behind the leased
    /// routine work waiting for `requests`.
    pub(super) urgent_request: Arc<Semaphore>,
    /// Deliveries leased at insert, with the lane slot reserved for them.
    /// Each holds a lane slot, so at most `leased_max` (plus one P1)
    /// wait here.
    pub(super) handoff: mpsc::UnboundedSender<(ClaimedDelivery, OwnedSemaphorePermit)>,
    pub(super) handed_off:
        std::sync::Mutex<Option<mpsc::UnboundedReceiver<(ClaimedDelivery, OwnedSemaphorePermit)>>>,
    pub(super) metrics: Arc<DestinationMetrics>,
    /// Circuit breaker and token bucket; held only for arithmetic.
    pub(super) guard: std::sync::Mutex<Guard>,
    /// The last error an attempt met, and when (ms), for operators.
    pub(super) last_error: std::sync::Mutex<Option<(String, i64)>>,
    pub(super) events: EventBus,
}

impl Lane {
    /// Something became due; with `may_hold_p1`, worth the P1 slot's claim
    /// too when every other slot is busy.
    pub(super) fn wake(&self, may_hold_p1: bool) {
        self.wake.notify_one();
        if may_hold_p1 {
            self.urgent_wake.notify_one();
        }
    }
}

/// `global`: the server's shutdown. The lane's own `stop` is set at
/// shutdown or when a reload retires it.
pub(super) async fn run_lane<S: Store>(
    store: Arc<S>,
    lane: Arc<Lane>,
    global: watch::Receiver<bool>,
) {
    let mut shutdown = lane.stop.subscribe();
    let name = lane.destination.name.clone();
    let mut attempts = JoinSet::new();
    let Some(mut handed_off) = lane.handed_off.lock().expect("lane poisoned").take() else {
        tracing::error!(destination = %name, "bug: a lane ran twice");
        return;
    };
    // Attempts handed off by the API start whatever the lane is waiting on.
    macro_rules! start_handed_off {
        ($item:expr) => {
            if let Some((delivery, slot)) = $item {
                attempts.spawn(attempt_task(&store, &lane, delivery, slot));
            }
        };
    }
    // Whether something may be due that this lane has not claimed: a claim
    // is a store round trip (a transaction on PostgreSQL), so the lane
    // claims only after a wake-up, when its timer runs out, after a full
    // claim, or when a pause ends; never merely because an attempt handed
    // off at insert started (at a low rate that was one empty claim per
    // delivery). `look_at_ms`: when to look anyway (the next due time, or
    // the idle poll).
    let mut look = true;
    let mut look_at_ms = i64::MAX;
    loop {
        while let Some(ended) = attempts.try_join_next() {
            if let Err(error) = ended {
                tracing::error!(destination = %name, %error,
                    "bug: an attempt task failed; its delivery stays leased until the next start");
            }
        }
        while let Ok(item) = handed_off.try_recv() {
            start_handed_off!(Some(item));
        }
        // A dropped sender counts as a stop, or `changed()` would return at
        // once and the lane would spin.
        if *shutdown.borrow() || shutdown.has_changed().is_err() {
            break;
        }
        let now = now_ms();
        let paused_until = lane.paused_until();
        if paused_until > now {
            tracing::debug!(destination = %name, pause_ms = paused_until - now, "destination paused");
            // An operator's pause may be long or open-ended: look again at
            // least every idle poll, and at once on a resume's wake-up.
            let sleep_ms = (paused_until - now).min(IDLE_POLL_MS) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = lane.wake.notified() => {}
                item = handed_off.recv() => start_handed_off!(item),
                _ = shutdown.changed() => {}
            }
            // What became due during the pause waits to be claimed.
            look = true;
            continue;
        }
        let free = lane.slots.available_permits();
        if free == 0 {
            let urgent_slot_free = lane.urgent_slot.available_permits() > 0;
            tokio::select! {
                permit = lane.slots.acquire() => drop(permit),
                // Every slot is busy and new work that may hold a P1
                // arrived: a P1 must not wait for the backlog, so it may
                // take the reserved slot.
                _ = lane.urgent_wake.notified(), if urgent_slot_free => {
                    // Taken before the claim: the API may take it for a P1
                    // it leases at insert at any moment.
                    let Ok(permit) = lane.urgent_slot.clone().try_acquire_owned() else {
                        continue;
                    };
                    if lane.admit(now_ms(), 1) != Admit::Go(1) {
                        continue;
                    }
                    match store.claim_due_urgent(&name, now_ms()).await {
                        Ok(claim) => {
                            lane.refund(1 - claim.deliveries.len().min(1));
                            let mut claimed = claim.deliveries.into_iter();
                            if let Some(delivery) = claimed.next() {
                                publish_leased(&lane, &delivery);
                                attempts.spawn(attempt_task(&store, &lane, delivery, permit));
                            }
                            if claimed.len() > 0 {
                                tracing::error!(destination = %name, extra = claimed.len(),
                                    "bug: an urgent claim leased more than one delivery; the rest wait for the next start");
                            }
                        }
                        Err(error) => {
                            lane.refund(1);
                            tracing::error!(destination = %name, %error, "cannot claim urgent deliveries");
                        }
                    }
                }
                item = handed_off.recv() => start_handed_off!(item),
                _ = shutdown.changed() => {}
            }
            continue;
        }
        if !look && now < look_at_ms {
            let sleep_ms = (look_at_ms - now) as u64;
            tokio::select! {
                _ = lane.wake.notified() => look = true,
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => look = true,
                item = handed_off.recv() => start_handed_off!(item),
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let limit = match lane.admit(now, free.min(CLAIM_BATCH_MAX)) {
            Admit::Go(limit) => limit,
            wait => {
                let until_ms = match wait {
                    Admit::WaitUntil(until_ms) => until_ms,
                    _ => now.saturating_add(IDLE_POLL_MS),
                };
                let sleep_ms = until_ms.saturating_sub(now).max(1) as u64;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                    _ = lane.wake.notified() => {}
                    item = handed_off.recv() => start_handed_off!(item),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        // Take the slots before claiming: the API may reserve slots for
        // hand-offs at any moment, and a claimed delivery must never wait
        // for one.
        let Ok(mut reserved) = lane.slots.clone().try_acquire_many_owned(limit as u32) else {
            lane.refund(limit);
            continue;
        };
        let claim = match store.claim_due(&name, limit, now).await {
            Ok(claim) => claim,
            Err(error) => {
                tracing::error!(destination = %name, %error, "cannot claim due deliveries");
                lane.refund(limit);
                drop(reserved);
                tokio::time::sleep(Duration::from_millis(STORE_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        for expired in &claim.expired {
            lane.metrics.record_final(expired.progress.state);
            publish_leased(&lane, expired);
        }
        let claimed = claim.deliveries.len();
        for delivery in claim.deliveries {
            let permit = reserved
                .split(1)
                .expect("a claim returns no more deliveries than its limit");
            publish_leased(&lane, &delivery);
            attempts.spawn(attempt_task(&store, &lane, delivery, permit));
        }
        drop(reserved); // Slots not used by this claim are free again.
        lane.refund(limit - claimed);
        // A full claim may have left more due right now; otherwise nothing
        // is due before the next due time, or a wake-up.
        look = claimed == limit;
        look_at_ms = claim
            .next_due_at_ms
            .unwrap_or(i64::MAX)
            .min(now.saturating_add(IDLE_POLL_MS));
    }
    // Retired by a reload (the server runs on): every slot reserved on this
    // lane comes back, as a hand-off started here or dropped, and every
    // attempt records its outcome, before the lane goes. Held permits keep
    // late reservations off this lane.
    let mut _all_slots = None;
    if !*global.borrow() {
        let slots_max = lane.leased_max;
        let all = async {
            let slots = lane.slots.acquire_many(slots_max).await;
            let urgent = lane.urgent_slot.acquire().await;
            let recording = lane.recording.acquire_many(slots_max).await;
            (slots, urgent, recording)
        };
        tokio::pin!(all);
        let mut global = global.clone();
        loop {
            tokio::select! {
                permits = &mut all => {
                    _all_slots = Some(permits);
                    break;
                }
                item = handed_off.recv() => start_handed_off!(item),
                _ = global.wait_for(|stop| *stop) => break,
            }
        }
        tracing::info!(destination = %name, "the destination's previous lane has finished its attempts");
    }
    // Shutdown: claim nothing new, but start what was already leased and
    // handed off (its broadcast was accepted), and let every attempt in
    // flight record its outcome.
    handed_off.close();
    while let Some(item) = handed_off.recv().await {
        start_handed_off!(Some(item));
    }
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), async {
        while attempts.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Released, not lost: these deliveries stay `sending` in the
        // database, and the next start verifies them before any re-send.
        tracing::warn!(destination = %name, attempts = attempts.len(),
            "attempts still in flight at the shutdown deadline were abandoned; the next start verifies them");
        attempts.abort_all();
        while attempts.join_next().await.is_some() {}
    }
}

fn publish_leased(lane: &Lane, delivery: &ClaimedDelivery) {
    lane.events.publish(|| StateChange {
        broadcast_id: delivery.broadcast_id.clone(),
        destination: delivery.destination.clone(),
        progress: delivery.progress.clone(),
        last_error: delivery.last_error.clone(),
        last_http_status: None,
        at_ms: now_ms(),
    });
}
