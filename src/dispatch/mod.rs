//! The delivery engine. One lane per destination: it leases that
//! destination's due deliveries in batches, runs each attempt on its own task
//! (at most `concurrency` at once), records the outcome through the store's
//! group-committing writer, and pauses the whole lane when the destination
//! answers 429. Lanes share nothing but the store, so a slow, failing or
//! rate-limited destination never holds back another.
//!
//! `lane.rs` is the lane's loop, `attempt.rs` one attempt's steps,
//! `guard.rs` the destination's pause, breaker and token bucket; this file
//! is the `Dispatcher` the server drives (reloads, pauses, hand-offs, health).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::config::Destination;
use crate::connector::Connector;
use crate::domain::{DeliveryState, Severity};
use crate::events::EventBus;
use crate::metrics::DestinationMetrics;
use crate::store::{ClaimedDelivery, Store};

/// Deliveries leased by one claim at most.
const CLAIM_BATCH_MAX: usize = 256;
/// A lane holds between these many leased deliveries, not yet answered, per
/// request it may have at the destination (`concurrency`); they wait in
/// memory for a request slot. With one, every slot that freed sat idle for
/// a claim's commit before its next request could leave; with more, more
/// new deliveries are leased at insert and need no claim (on PostgreSQL a
/// transaction and a row version each). See `leased_per_request_slot`.
const LEASED_PER_REQUEST_SLOT_MIN: usize = 2;
const LEASED_PER_REQUEST_SLOT_MAX: usize = 4;

/// How many unanswered deliveries a lane may hold leased per request slot.
/// A leased delivery waits for at most `k - 1` requests on its slot, each
/// ending within the destination's timeout, before its own leaves: `k`
/// timeouts. Where another node may take an expired lease over
/// (PostgreSQL; `lease_hold_max_ms` is half the lease there), `k + 1`
/// timeouts must fit in the lease, one spare; `lease_ms` is at least twice
/// the longest timeout, so 2 always fits with none spare, as before this
/// was computed. On SQLite leases are this node's alone.
fn leased_per_request_slot(lease_hold_max_ms: Option<u64>, timeout_ms: u64) -> usize {
    let fits = match lease_hold_max_ms {
        Some(hold_ms) => (hold_ms.saturating_mul(2) / timeout_ms.max(1)).saturating_sub(1),
        None => LEASED_PER_REQUEST_SLOT_MAX as u64,
    };
    (fits as usize).clamp(LEASED_PER_REQUEST_SLOT_MIN, LEASED_PER_REQUEST_SLOT_MAX)
}
/// A lane with nothing due looks again after this long even without a wake-up
/// (a safety net; new work and retries wake it directly).
const IDLE_POLL_MS: i64 = 5_000;
/// At shutdown, attempts in flight get this long to finish and record their
/// outcome; the rest are released to the next start's recovery.
pub(crate) const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// After a store error, a lane waits this long before trying again.
const STORE_ERROR_PAUSE_MS: u64 = 500;
/// Tries to record one outcome before leaving it to the next restart
/// (with the pause doubling up to `RECORD_PAUSE_MS_MAX`: about ten minutes).
const RECORD_TRIES_MAX: u32 = 130;
const RECORD_PAUSE_MS_MAX: u64 = 5_000;

mod attempt;
mod guard;
mod lane;
pub mod objectives;
#[cfg(test)]
mod tests;

pub use guard::Circuit;
use guard::{Admit, Guard, Hold};
use lane::{run_lane, Lane};

pub struct Dispatcher<S> {
    store: Arc<S>,
    /// Swapped by a reload; read briefly, never held across an await.
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
    /// Operators' pauses by destination name, kept across reloads.
    holds: std::sync::Mutex<HashMap<String, Arc<Hold>>>,
    events: EventBus,
    lease_hold_max_ms: Option<u64>,
    /// Lanes a reload added, for `run` to start.
    started: mpsc::UnboundedSender<Arc<Lane>>,
    to_start: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Arc<Lane>>>>,
}

/// A lane slot reserved for a delivery leased at insert; it is handed off
/// to the very lane that reserved it, even if a reload replaced that lane
/// meanwhile (the replaced lane waits for it before it goes).
pub struct SlotReservation {
    lane: Arc<Lane>,
    slot: OwnedSemaphorePermit,
}

/// What a reload changed in the lanes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// A destination's live condition, as the dispatcher sees it.
#[derive(Clone, Debug)]
pub struct LaneHealth {
    pub kind: &'static str,
    pub concurrency: u32,
    pub paused_until_ms: Option<i64>,
    pub in_flight: usize,
    pub consecutive_failures: u32,
    pub circuit: Circuit,
    pub rate_per_sec: Option<f64>,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
}

impl<S: Store> Dispatcher<S> {
    /// `lease_hold_max_ms`: how long an attempt may wait out a pause while
    /// holding its lease (on PostgreSQL, half the lease, so a paused attempt
    /// never outlives its lease and races a takeover); `None`: unbounded.
    pub fn new(
        store: Arc<S>,
        destinations: &[Destination],
        events: EventBus,
        lease_hold_max_ms: Option<u64>,
    ) -> Result<Dispatcher<S>, reqwest::Error> {
        let (started, to_start) = mpsc::unbounded_channel();
        let dispatcher = Dispatcher {
            store,
            lanes: RwLock::new(HashMap::new()),
            holds: std::sync::Mutex::new(HashMap::new()),
            events,
            lease_hold_max_ms,
            started,
            to_start: std::sync::Mutex::new(Some(to_start)),
        };
        let mut lanes = HashMap::new();
        for destination in destinations {
            let lane = dispatcher.new_lane(destination, Arc::default())?;
            lanes.insert(destination.name.clone(), Arc::new(lane));
        }
        *dispatcher.lanes.write().expect("lanes poisoned") = lanes;
        Ok(dispatcher)
    }

    fn new_lane(
        &self,
        destination: &Destination,
        metrics: Arc<DestinationMetrics>,
    ) -> Result<Lane, reqwest::Error> {
        let (handoff, handed_off) = mpsc::unbounded_channel();
        let hold = self
            .holds
            .lock()
            .expect("holds poisoned")
            .entry(destination.name.clone())
            .or_default()
            .clone();
        let leased_max = destination.concurrency
            * leased_per_request_slot(self.lease_hold_max_ms, destination.timeout_ms) as u32;
        Ok(Lane {
            handoff,
            handed_off: std::sync::Mutex::new(Some(handed_off)),
            metrics,
            guard: std::sync::Mutex::new(Guard {
                circuit: Circuit::Closed,
                failures_in_row: 0,
                tokens: f64::from(destination.isolation.rate_burst),
                refilled_at_ms: now_ms(),
            }),
            last_error: std::sync::Mutex::new(None),
            events: self.events.clone(),
            connector: Connector::new(destination)?,
            wake: Notify::new(),
            urgent_wake: Notify::new(),
            paused_until_ms: AtomicI64::new(0),
            lease_hold_max_ms: self.lease_hold_max_ms,
            leased_max,
            slots: Arc::new(Semaphore::new(leased_max as usize)),
            urgent_slot: Arc::new(Semaphore::new(1)),
            recording: Arc::new(Semaphore::new(leased_max as usize)),
            requests: Arc::new(Semaphore::new(destination.concurrency as usize)),
            urgent_request: Arc::new(Semaphore::new(1)),
            destination: destination.clone(),
            stop: watch::channel(false).0,
            hold,
        })
    }

    fn lane(&self, destination: &str) -> Option<Arc<Lane>> {
        self.lanes
            .read()
            .expect("lanes poisoned")
            .get(destination)
            .cloned()
    }

    /// Applies a reloaded list of destinations: a new lane for each added
    /// one; a removed one's lane stops claiming (its unfinished deliveries
    /// wait in the store until the name comes back); a changed one gets a
    /// new lane (connector, policy, limits) for new attempts while the old
    /// lane's attempts finish under the settings they started with. Every
    /// connector is built before anything changes, so an error changes
    /// nothing.
    pub fn reload(&self, destinations: &[Destination]) -> Result<LaneChanges, reqwest::Error> {
        let current: HashMap<String, Arc<Lane>> =
            self.lanes.read().expect("lanes poisoned").clone();
        let mut built = Vec::new();
        let mut changes = LaneChanges::default();
        for destination in destinations {
            match current.get(&destination.name) {
                Some(lane) if same_destination(&lane.destination, destination) => {}
                Some(lane) => {
                    let new = self.new_lane(destination, lane.metrics.clone())?;
                    // A 429's pause is about the destination, not its settings.
                    new.pause_until(lane.paused_until_ms.load(Ordering::SeqCst));
                    built.push(Arc::new(new));
                    changes.changed.push(destination.name.clone());
                }
                None => {
                    built.push(Arc::new(self.new_lane(destination, Arc::default())?));
                    changes.added.push(destination.name.clone());
                }
            }
        }
        let mut retired = Vec::new();
        {
            let mut lanes = self.lanes.write().expect("lanes poisoned");
            for name in current.keys() {
                if !destinations.iter().any(|d| d.name == *name) {
                    retired.extend(lanes.remove(name));
                    changes.removed.push(name.clone());
                }
            }
            for lane in &built {
                retired.extend(lanes.insert(lane.destination.name.clone(), lane.clone()));
            }
        }
        for lane in retired {
            let _ = lane.stop.send(true);
        }
        for lane in built {
            lane.wake(true);
            // Fails only once `run` has stopped (shutdown): nothing to start.
            let _ = self.started.send(lane);
        }
        changes.removed.sort();
        Ok(changes)
    }

    /// An operator paused `destination` until `until_ms` (0: resumed).
    /// On PostgreSQL the shared `destination_state` is what gates claims on
    /// every node, and another node may end the pause: this node's own
    /// memory of it lasts at most half a lease (as long as an attempt may
    /// wait out a pause), then the store decides alone.
    pub fn hold(&self, destination: &str, until_ms: i64) {
        let until_ms = match self.lease_hold_max_ms {
            Some(hold_ms) if until_ms > 0 => until_ms.min(now_ms().saturating_add(hold_ms as i64)),
            _ => until_ms,
        };
        let hold = self
            .holds
            .lock()
            .expect("holds poisoned")
            .entry(destination.to_owned())
            .or_default()
            .clone();
        hold.until_ms.store(until_ms, Ordering::SeqCst);
        hold.changed.notify_waiters();
        self.wake(destination);
    }

    /// New work for `destination` was committed, maybe a P1: look now, not
    /// at the next poll.
    pub fn wake(&self, destination: &str) {
        if let Some(lane) = self.lane(destination) {
            lane.wake(true);
        }
    }

    /// Every lane looks now (notifications may have been missed).
    pub fn wake_all(&self) {
        for lane in self.lanes.read().expect("lanes poisoned").values() {
            lane.wake(true);
        }
    }

    /// New work for `destination` was committed, and none of it is a P1:
    /// look now, but with every slot busy it waits for a slot like the rest.
    pub fn wake_routine(&self, destination: &str) {
        if let Some(lane) = self.lane(destination) {
            lane.wake(false);
        }
    }

    /// Reserves a lane slot for a new delivery to `destination`, so it can
    /// be leased in the insert's own transaction and start at once. When
    /// every slot is busy, a P1 takes the slot reserved for P1s if it is
    /// free: it then needs neither a wake-up nor a claim, one commit fewer
    /// between its accept and its first attempt. None when the destination
    /// is paused or busy: the delivery then waits to be claimed like any
    /// other.
    pub fn reserve_slot(&self, destination: &str, severity: Severity) -> Option<SlotReservation> {
        let lane = self.lane(destination)?;
        let now = now_ms();
        if lane.paused_until() > now {
            return None;
        }
        if lane.guard.lock().expect("lane poisoned").circuit != Circuit::Closed {
            return None; // the lane probes
        }
        let slot = match lane.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if severity == Severity::P1 => {
                lane.urgent_slot.clone().try_acquire_owned().ok()?
            }
            Err(_) => return None,
        };
        (lane.admit(now, 1) == Admit::Go(1)).then_some(SlotReservation { lane, slot })
    }

    /// Starts the attempt of a delivery leased at insert, on the slot
    /// reserved for it.
    pub fn hand_off(&self, delivery: ClaimedDelivery, reservation: SlotReservation) {
        // Fails only when the lane has stopped (shutdown): the delivery
        // stays leased and the next start verifies it.
        let _ = reservation.lane.handoff.send((delivery, reservation.slot));
    }

    pub fn health(&self, destination: &str) -> Option<LaneHealth> {
        let lane = self.lane(destination)?;
        let paused = lane.paused_until_ms.load(Ordering::SeqCst);
        // One lock, released before anything else is read.
        let (failures_in_row, circuit) = {
            let guard = lane.guard.lock().expect("lane poisoned");
            (guard.failures_in_row, guard.circuit)
        };
        let last_error = lane.last_error.lock().expect("lane poisoned").clone();
        Some(LaneHealth {
            kind: lane.destination.target.kind(),
            concurrency: lane.destination.concurrency,
            paused_until_ms: (paused > now_ms()).then_some(paused),
            in_flight: (lane.destination.concurrency as usize)
                .saturating_sub(lane.requests.available_permits()),
            consecutive_failures: failures_in_row,
            circuit,
            rate_per_sec: lane.destination.isolation.rate_per_sec,
            last_error: last_error.as_ref().map(|(error, _)| error.clone()),
            last_error_at_ms: last_error.map(|(_, at_ms)| at_ms),
        })
    }

    /// Each destination's counters, by name, for `/metrics`.
    pub fn metrics(&self) -> Vec<(String, Arc<DestinationMetrics>)> {
        let mut list: Vec<(String, Arc<DestinationMetrics>)> = self
            .lanes
            .read()
            .expect("lanes poisoned")
            .iter()
            .map(|(name, lane)| (name.clone(), lane.metrics.clone()))
            .collect();
        list.sort_by(|(a, _), (b, _)| a.cmp(b));
        list
    }

    /// Counts a delivery made final outside an attempt (an operator cancel).
    pub fn record_final(&self, destination: &str, state: DeliveryState) {
        if let Some(lane) = self.lane(destination) {
            lane.metrics.record_final(state);
        }
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// Runs every lane until `shutdown` turns true, then lets in-flight
    /// attempts finish (each is bounded by its destination's timeout).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(mut to_start) = self.to_start.lock().expect("dispatcher poisoned").take() else {
            tracing::error!("bug: the dispatcher ran twice");
            return;
        };
        let mut lanes = JoinSet::new();
        let current: Vec<Arc<Lane>> = self
            .lanes
            .read()
            .expect("lanes poisoned")
            .values()
            .cloned()
            .collect();
        for lane in current {
            lanes.spawn(run_lane(self.store.clone(), lane, shutdown.clone()));
        }
        let report = |ended: Result<(), tokio::task::JoinError>| {
            if let Err(error) = ended {
                tracing::error!(%error, "bug: a destination lane stopped; its deliveries wait for a restart");
            }
        };
        let lane_shutdown = shutdown.clone();
        loop {
            tokio::select! {
                Some(lane) = to_start.recv() => {
                    lanes.spawn(run_lane(self.store.clone(), lane, lane_shutdown.clone()));
                }
                Some(ended) = lanes.join_next(), if !lanes.is_empty() => report(ended),
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        for lane in self.lanes.read().expect("lanes poisoned").values() {
            let _ = lane.stop.send(true);
        }
        while let Some(ended) = lanes.join_next().await {
            report(ended);
        }
    }
}

/// Whether a reload leaves a destination's lane as it is.
fn same_destination(a: &Destination, b: &Destination) -> bool {
    // `Destination` has no PartialEq; its Debug shows every setting but
    // redacts the secrets, so those are compared apart.
    format!("{a:?}") == format!("{b:?}") && secrets(&a.target) == secrets(&b.target)
}

fn secrets(target: &crate::config::Target) -> Vec<&[u8]> {
    use crate::config::Target;
    match target {
        Target::Webhook { secret, .. } => secret.iter().map(|s| s.key()).collect(),
        Target::Slack { token, .. }
        | Target::Jira { token, .. }
        | Target::DiscordBot { token, .. }
        | Target::Matrix { token, .. }
        | Target::Telegram { token, .. } => vec![token.expose().as_bytes()],
        Target::Sms { auth_token, .. } => vec![auth_token.expose().as_bytes()],
        Target::Zulip { api_key, .. } => vec![api_key.expose().as_bytes()],
        Target::PagerDuty { routing_key, .. } => vec![routing_key.expose().as_bytes()],
        Target::Email { password, .. } => password.iter().map(|p| p.expose().as_bytes()).collect(),
        Target::GoogleChat { mode, .. } => mode.secret_bytes(),
        Target::Teams { .. } | Target::Discord { .. } => Vec::new(),
    }
}
