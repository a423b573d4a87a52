//! The delivery engine. One lane per destination: it leases that
//! destination's due deliveries in batches, runs each attempt on its own task
//! (at most `concurrency` at once), records the outcome through the store's
//! group-committing writer, and pauses the whole lane when the destination
//! answers 429. Lanes share nothing but the store, so a slow, failing or
//! rate-limited destination never holds back another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::config::Destination;
use crate::connector::Connector;
use crate::domain::{DeliveryState, Event, OutcomeClass, Severity, Verification};
use crate::events::{EventBus, StateChange};
use crate::metrics::DestinationMetrics;
use crate::store::{
    AttemptKind, AttemptRecord, ClaimedDelivery, DeliveryUpdate, Store, UpdateResult,
};

/// Deliveries leased by one claim at most.
const CLAIM_BATCH_MAX: usize = 256;
/// A lane holds at most this many leased deliveries per request it may have
/// at the destination (`concurrency`): the rest wait in memory for a
/// request slot, or for their outcome's commit. With one, every slot that
/// freed sat idle for a claim's commit before its next request could leave.
const LEASED_PER_REQUEST_SLOT: usize = 2;
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

/// An operator's pause of a destination (`until_ms`, 0 when none), in
/// memory; the store holds it durably. Shared by the lanes a reload builds
/// for the same name, so a changed destination stays paused.
#[derive(Default)]
struct Hold {
    until_ms: AtomicI64,
    /// Woken at resume: attempts leased before the pause wait on it.
    changed: Notify,
}

struct Lane {
    destination: Destination,
    /// Set when a reload removed or replaced this lane (or at shutdown): it
    /// claims nothing more, and goes once its attempts have finished.
    stop: watch::Sender<bool>,
    hold: Arc<Hold>,
    connector: Connector,
    wake: Notify,
    /// New work that may hold a P1: with every slot busy, it is worth a
    /// claim for the slot reserved for P1s. Routine work (no P1) does not
    /// wake this, so a burst of it costs no empty urgent claims.
    urgent_wake: Notify,
    paused_until_ms: AtomicI64,
    /// How long an attempt may wait out a pause holding its lease.
    lease_hold_max_ms: Option<u64>,
    /// Deliveries the lane holds leased: a slot is taken at claim (or at
    /// insert, for a hand-off) and given back when the attempt's outcome is
    /// on disk. `LEASED_PER_REQUEST_SLOT` per request slot, so the next
    /// requests are already leased when a request slot frees.
    slots: Arc<Semaphore>,
    /// One more slot, used only by P1 deliveries when `slots` are all busy.
    urgent_slot: Arc<Semaphore>,
    /// Requests at the destination (`concurrency`): taken by an attempt
    /// just before its request leaves, given back when the destination has
    /// answered, in the order attempts asked for them.
    requests: Arc<Semaphore>,
    /// One more request, for P1s only: a P1 never queues behind the leased
    /// routine work waiting for `requests`.
    urgent_request: Arc<Semaphore>,
    /// Deliveries leased at insert, with the lane slot reserved for them.
    /// Each holds a lane slot, so at most `2 × concurrency` (plus one P1)
    /// wait here.
    handoff: mpsc::UnboundedSender<(ClaimedDelivery, OwnedSemaphorePermit)>,
    handed_off:
        std::sync::Mutex<Option<mpsc::UnboundedReceiver<(ClaimedDelivery, OwnedSemaphorePermit)>>>,
    metrics: Arc<DestinationMetrics>,
    /// Circuit breaker and token bucket; held only for arithmetic.
    guard: std::sync::Mutex<Guard>,
    /// The last error an attempt met, and when (ms), for operators.
    last_error: std::sync::Mutex<Option<(String, i64)>>,
    events: EventBus,
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

struct Guard {
    circuit: Circuit,
    /// Attempts in a row that failed in a way that says the destination is
    /// unwell (retryable, ambiguous); reset by a success.
    failures_in_row: u32,
    /// Token bucket for `rate_per_sec`.
    tokens: f64,
    refilled_at_ms: i64,
}

/// What the lane may do now.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Up to this many attempts.
    Go(usize),
    /// Nothing before this instant (breaker open, bucket empty).
    WaitUntil(i64),
    /// Nothing until the probe in flight lands (it wakes the lane).
    WaitForProbe,
}

impl Lane {
    /// Something became due; with `may_hold_p1`, worth the P1 slot's claim
    /// too when every other slot is busy.
    fn wake(&self, may_hold_p1: bool) {
        self.wake.notify_one();
        if may_hold_p1 {
            self.urgent_wake.notify_one();
        }
    }

    fn pause_until(&self, until_ms: i64) {
        self.paused_until_ms.fetch_max(until_ms, Ordering::SeqCst);
    }

    /// Until when nothing may be sent: a 429's pause or an operator's.
    fn paused_until(&self) -> i64 {
        self.paused_until_ms
            .load(Ordering::SeqCst)
            .max(self.hold.until_ms.load(Ordering::SeqCst))
    }

    /// How many attempts may start now, at most `wanted`; takes their
    /// tokens (give back unused ones with `refund`).
    fn admit(&self, now_ms: i64, wanted: usize) -> Admit {
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
    fn refund(&self, unused: usize) {
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
    fn record_health(&self, class: Option<OutcomeClass>, now_ms: i64) -> bool {
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
            slots: Arc::new(Semaphore::new(
                destination.concurrency as usize * LEASED_PER_REQUEST_SLOT,
            )),
            urgent_slot: Arc::new(Semaphore::new(1)),
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
        | Target::DiscordBot { token, .. } => vec![token.expose().as_bytes()],
        Target::PagerDuty { routing_key, .. } => vec![routing_key.expose().as_bytes()],
        Target::Teams { .. } | Target::Discord { .. } => Vec::new(),
    }
}

/// `global`: the server's shutdown. The lane's own `stop` is set at
/// shutdown or when a reload retires it.
async fn run_lane<S: Store>(store: Arc<S>, lane: Arc<Lane>, global: watch::Receiver<bool>) {
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
        if claimed == limit {
            continue; // There may be more due right now.
        }
        let wake_at_ms = claim
            .next_due_at_ms
            .unwrap_or(i64::MAX)
            .min(now.saturating_add(IDLE_POLL_MS));
        let sleep_ms = wake_at_ms.saturating_sub(now_ms()).max(0) as u64;
        tokio::select! {
            _ = lane.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
            item = handed_off.recv() => start_handed_off!(item),
            _ = shutdown.changed() => {}
        }
    }
    // Retired by a reload (the server runs on): every slot reserved on this
    // lane comes back, as a hand-off started here or dropped, and every
    // attempt records its outcome, before the lane goes. Held permits keep
    // late reservations off this lane.
    let mut _all_slots = None;
    if !*global.borrow() {
        let slots_max = lane.destination.concurrency * LEASED_PER_REQUEST_SLOT as u32;
        let all = async {
            let slots = lane.slots.acquire_many(slots_max).await;
            let urgent = lane.urgent_slot.acquire().await;
            (slots, urgent)
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

/// An attempt, ready to spawn. Boxed: its future holds a whole HTTP
/// exchange, and moving it by value into the task (and within it) showed as
/// `memmove` in burst profiles; a box is moved as one pointer.
fn attempt_task<S: Store>(
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
    _slot: OwnedSemaphorePermit,
) {
    let policy = lane.destination.policy;
    let waiting_since_ms = now_ms();
    // At most `concurrency` requests at the destination; the deliveries
    // leased ahead wait here, in claim order. A P1 takes whichever of its
    // own slot and the shared ones frees first.
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
        return;
    };
    // A 429 may have paused the destination after this delivery was leased
    // (a claim or a hand-off racing the answer): nothing leaves before the
    // pause is over, unless holding the lease that long would let it
    // expire (then the destination's own answer decides).
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
    let started_at_ms = now_ms();
    let (update, pause_ms) = match delivery.progress.state {
        DeliveryState::Verifying => {
            let report = lane.connector.verify(&delivery).await;
            let finished_at_ms = now_ms();
            let event = Event::Verified {
                result: report.result,
                resend_may_duplicate: report.resend_may_duplicate,
            };
            let Some(transition) = next_progress(&delivery, event, &policy, finished_at_ms) else {
                return;
            };
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
            let update = DeliveryUpdate {
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
            };
            (update, None)
        }
        DeliveryState::Sending => {
            let outcome = lane.connector.send(&delivery, started_at_ms).await;
            let finished_at_ms = now_ms();
            let event = Event::Finished {
                class: outcome.class,
                retry_after_ms: outcome.retry_after_ms,
            };
            let Some(transition) = next_progress(&delivery, event, &policy, finished_at_ms) else {
                return;
            };
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
            (update, pause_ms)
        }
        state => {
            tracing::error!(
                state = state.as_str(),
                "bug: claimed a delivery that is neither sending nor verifying"
            );
            return;
        }
    };
    if let Some(pause_ms) = pause_ms {
        lane.pause_until(update.now_ms.saturating_add(pause_ms as i64));
        tracing::warn!(destination = %lane.destination.name, pause_ms, "destination rate limited; pausing it");
    }
    let next_state = update.progress.state;
    // Each attempt at debug; the state it leads to, once committed, at
    // info (below): one line per state change.
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
    // The destination has answered: what it said reaches the breaker and
    // the operators' view now, and the request slot goes to the next
    // leased delivery while this outcome is committed. The lane slot (the
    // lease) is held until the outcome is on disk, so nothing else can
    // take the delivery meanwhile, and what waits for the disk is bounded.
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
    drop(request);
    let mut tries = 0;
    let result = loop {
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
    };
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
    // A retry or a verification was scheduled, or the next delivery of a
    // thread became pending: let the lane recompute when to look again.
    let promoted = matches!(
        result,
        Some(UpdateResult::Applied {
            promoted_next_in_thread: true
        })
    );
    let rescheduled = matches!(
        next_state,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use std::sync::atomic::AtomicUsize;

    fn dispatcher(dir: &std::path::Path, concurrency: u32) -> Dispatcher<SqliteStore> {
        let store = SqliteStore::open(dir.join("herald.db")).unwrap();
        let mut destination = crate::demo::mock_destination("http://127.0.0.1:9", "webhook", "d");
        destination.concurrency = concurrency;
        Dispatcher::new(Arc::new(store), &[destination], EventBus::default(), None).unwrap()
    }

    /// A new delivery is leased at insert only with a slot; when the
    /// destination is busy only a P1 may take the one slot kept for P1s,
    /// and only while no other P1 holds it.
    #[test]
    fn when_every_slot_is_busy_only_a_p1_gets_the_reserved_slot_at_accept() {
        let dir = tempfile::tempdir().unwrap();
        let dispatcher = dispatcher(dir.path(), 1);
        let regular: Vec<_> = (0..LEASED_PER_REQUEST_SLOT)
            .map(|_| dispatcher.reserve_slot("d", Severity::P3))
            .collect();
        assert!(
            regular.iter().all(Option::is_some),
            "free slots go to any severity, {LEASED_PER_REQUEST_SLOT} per request slot"
        );
        for severity in [Severity::P2, Severity::P3, Severity::P5] {
            assert!(
                dispatcher.reserve_slot("d", severity).is_none(),
                "{severity:?}"
            );
        }
        let urgent = dispatcher.reserve_slot("d", Severity::P1);
        assert!(urgent.is_some(), "a P1 takes the reserved slot");
        assert!(
            dispatcher.reserve_slot("d", Severity::P1).is_none(),
            "the reserved slot is one"
        );
        drop(urgent);
        assert!(dispatcher.reserve_slot("d", Severity::P1).is_some());
        drop(regular);
        // A paused destination leases nothing at insert, not even a P1.
        let lane = dispatcher.lane("d").unwrap();
        lane.pause_until(now_ms() + 60_000);
        assert!(dispatcher.reserve_slot("d", Severity::P1).is_none());
        assert!(dispatcher.reserve_slot("d", Severity::P3).is_none());
    }

    /// A SQLite store whose outcome writes wait until the test opens the
    /// gate, as if every commit were slow; everything else goes straight
    /// through.
    struct HeldOutcomes {
        inner: SqliteStore,
        gate: Semaphore,
        waiting: AtomicUsize,
    }

    impl Store for HeldOutcomes {
        async fn insert_broadcast(
            &self,
            new: crate::store::NewBroadcast,
        ) -> Result<Vec<crate::store::InsertedDelivery>, crate::store::StoreError> {
            self.inner.insert_broadcast(new).await
        }
        async fn claim_due(
            &self,
            destination: &str,
            limit: usize,
            now_ms: i64,
        ) -> Result<crate::store::Claim, crate::store::StoreError> {
            self.inner.claim_due(destination, limit, now_ms).await
        }
        async fn claim_due_urgent(
            &self,
            destination: &str,
            now_ms: i64,
        ) -> Result<crate::store::Claim, crate::store::StoreError> {
            self.inner.claim_due_urgent(destination, now_ms).await
        }
        async fn update_delivery(
            &self,
            update: DeliveryUpdate,
        ) -> Result<UpdateResult, crate::store::StoreError> {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let permit = self.gate.acquire().await.expect("gate open");
            permit.forget();
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.inner.update_delivery(update).await
        }
        async fn recover(
            &self,
            now_ms: i64,
        ) -> Result<crate::store::Recovery, crate::store::StoreError> {
            self.inner.recover(now_ms).await
        }
        async fn broadcast(
            &self,
            id: &str,
        ) -> Result<Option<crate::store::BroadcastView>, crate::store::StoreError> {
            self.inner.broadcast(id).await
        }
        async fn destinations_with_work(&self) -> Result<Vec<String>, crate::store::StoreError> {
            self.inner.destinations_with_work().await
        }
        async fn ingest_record(
            &self,
            caller: &str,
            key: &str,
            now_ms: i64,
        ) -> Result<Option<crate::store::IngestRecord>, crate::store::StoreError> {
            self.inner.ingest_record(caller, key, now_ms).await
        }
        async fn save_ingest_response(
            &self,
            caller: &str,
            key: &str,
            response: String,
        ) -> Result<(), crate::store::StoreError> {
            self.inner.save_ingest_response(caller, key, response).await
        }
        async fn purge_ingest_keys(&self, now_ms: i64) -> Result<u64, crate::store::StoreError> {
            self.inner.purge_ingest_keys(now_ms).await
        }
        async fn list_broadcasts(
            &self,
            filter: crate::store::BroadcastFilter,
        ) -> Result<Vec<crate::store::BroadcastView>, crate::store::StoreError> {
            self.inner.list_broadcasts(filter).await
        }
        async fn broadcast_ids_starting_with(
            &self,
            prefix: &str,
            limit: usize,
        ) -> Result<Vec<String>, crate::store::StoreError> {
            self.inner.broadcast_ids_starting_with(prefix, limit).await
        }
        async fn operator_action(
            &self,
            broadcast_id: &str,
            action: crate::store::OperatorAction,
            destinations: Vec<String>,
            policies: Vec<(String, crate::domain::RetryPolicy)>,
            now_ms: i64,
        ) -> Result<Option<Vec<String>>, crate::store::StoreError> {
            self.inner
                .operator_action(broadcast_id, action, destinations, policies, now_ms)
                .await
        }
        async fn backlog(
            &self,
        ) -> Result<Vec<crate::store::DestinationBacklog>, crate::store::StoreError> {
            self.inner.backlog().await
        }
        async fn delete_finished_broadcasts(
            &self,
            before_ms: i64,
            after_id: Option<String>,
            limit: usize,
        ) -> Result<crate::store::RetentionBatch, crate::store::StoreError> {
            self.inner
                .delete_finished_broadcasts(before_ms, after_id, limit)
                .await
        }
        async fn stored_broadcasts(&self) -> Result<u64, crate::store::StoreError> {
            self.inner.stored_broadcasts().await
        }
        async fn ping(&self) -> Result<(), crate::store::StoreError> {
            self.inner.ping().await
        }
        async fn pause_destination(
            &self,
            pause: crate::store::DestinationPause,
        ) -> Result<(), crate::store::StoreError> {
            self.inner.pause_destination(pause).await
        }
        async fn resume_destination(
            &self,
            destination: &str,
            now_ms: i64,
        ) -> Result<bool, crate::store::StoreError> {
            self.inner.resume_destination(destination, now_ms).await
        }
        async fn destination_pauses(
            &self,
            now_ms: i64,
        ) -> Result<Vec<crate::store::DestinationPause>, crate::store::StoreError> {
            self.inner.destination_pauses(now_ms).await
        }
    }

    /// Serves `app` on a free loopback port: the tests' destination.
    async fn serve_receiver(app: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        address
    }

    /// The state of the one delivery of each broadcast, in order.
    async fn states(store: &impl Store, ids: &[String]) -> Vec<DeliveryState> {
        let mut states = Vec::new();
        for id in ids {
            let view = store.broadcast(id).await.unwrap().unwrap();
            states.push(view.deliveries[0].progress.state);
        }
        states
    }

    /// Polls `condition` until it holds, for at most ten seconds.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The destination's answer frees its request slot for the next leased
    /// delivery while the outcome is still being committed; the delivery
    /// stays leased meanwhile, and what the lane holds leased is bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_slot_serves_the_next_delivery_while_the_outcome_is_committed() {
        // A receiver that answers 200 at once and counts what it got.
        let received = Arc::new(AtomicUsize::new(0));
        let counting = received.clone();
        let app = axum::Router::new().fallback(move || {
            counting.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        });
        let address = serve_receiver(app).await;

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(HeldOutcomes {
            inner: SqliteStore::open(dir.path().join("herald.db")).unwrap(),
            gate: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
        });
        let mut destination =
            crate::demo::mock_destination(&format!("http://{address}"), "webhook", "d");
        destination.concurrency = 1;
        let mut ids = Vec::new();
        for n in 0..3 {
            let created_at_ms = now_ms();
            let id = crate::domain::new_broadcast_id(created_at_ms, &mut rand::rng());
            let message =
                crate::domain::Message::new(&format!("INC-{n}"), "", Severity::P3, None).unwrap();
            store
                .insert_broadcast(crate::store::NewBroadcast {
                    id: id.clone(),
                    message,
                    created_at_ms,
                    routes: Vec::new(),
                    deliveries: vec![crate::store::NewDelivery {
                        destination: "d".into(),
                        policy: destination.policy,
                        lease_now: false,
                    }],
                    ingest_key: None,
                })
                .await
                .unwrap();
            ids.push(id);
        }
        let dispatcher = Arc::new(
            Dispatcher::new(store.clone(), &[destination], EventBus::default(), None).unwrap(),
        );
        let lane = dispatcher.lane("d").unwrap();
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(dispatcher.clone().run(stopped));
        dispatcher.wake("d");

        // One request slot, two lane slots, three deliveries, no outcome
        // committed: two deliveries were leased and sent one after the
        // other on the one request slot, both wait for their commit, and
        // the third is not leased (the lane has no slot for it).
        eventually("two requests sent while no outcome is committed", || {
            received.load(Ordering::SeqCst) == 2
                && store.waiting.load(Ordering::SeqCst) == 2
                && lane.slots.available_permits() == 0
                && lane.requests.available_permits() == 1
        })
        .await;
        assert_eq!(
            states(store.as_ref(), &ids).await,
            [
                DeliveryState::Sending,
                DeliveryState::Sending,
                DeliveryState::Pending
            ],
            "nothing is confirmed before its outcome is committed"
        );

        store.gate.add_permits(3);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while states(store.as_ref(), &ids).await != [DeliveryState::Confirmed; 3] {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never all confirmed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(received.load(Ordering::SeqCst), 3, "each sent once");
        stop.send(true).unwrap();
        running.await.unwrap();
    }

    /// A P1 does not queue behind routine deliveries leased ahead of it:
    /// with the one request slot taken and more routine work waiting for
    /// it, the P1's request goes out on the slot kept for P1s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_p1_does_not_wait_behind_leased_routine_deliveries() {
        // A receiver that notes each request's severity and answers only
        // when the test lets it.
        let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let answer = Arc::new(Semaphore::new(0));
        let (noting, answering) = (seen.clone(), answer.clone());
        let app = axum::Router::new().fallback(move |body: String| {
            let (seen, answer) = (noting.clone(), answering.clone());
            async move {
                let payload: serde_json::Value = serde_json::from_str(&body).unwrap();
                let severity = payload["data"]["severity"].as_str().unwrap().to_owned();
                seen.lock().unwrap().push(severity);
                answer.acquire().await.unwrap().forget();
                "ok"
            }
        });
        let address = serve_receiver(app).await;

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path().join("herald.db")).unwrap());
        let mut destination =
            crate::demo::mock_destination(&format!("http://{address}"), "webhook", "d");
        destination.concurrency = 1;
        let policy = destination.policy;
        let dispatcher = Arc::new(
            Dispatcher::new(store.clone(), &[destination], EventBus::default(), None).unwrap(),
        );
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(dispatcher.clone().run(stopped));
        // Accepts one broadcast to "d" the way the API does: leased at
        // insert when a slot is free, else left for a claim.
        let accept = |severity: Severity| {
            let (store, dispatcher) = (store.clone(), dispatcher.clone());
            async move {
                let slot = dispatcher.reserve_slot("d", severity);
                let created_at_ms = now_ms();
                let mut inserted = store
                    .insert_broadcast(crate::store::NewBroadcast {
                        id: crate::domain::new_broadcast_id(created_at_ms, &mut rand::rng()),
                        message: crate::domain::Message::new("INC-1", "", severity, None).unwrap(),
                        created_at_ms,
                        routes: Vec::new(),
                        deliveries: vec![crate::store::NewDelivery {
                            destination: "d".into(),
                            policy,
                            lease_now: slot.is_some(),
                        }],
                        ingest_key: None,
                    })
                    .await
                    .unwrap();
                match (inserted[0].leased.take(), slot) {
                    (Some(leased), Some(slot)) => dispatcher.hand_off(leased, slot),
                    _ => dispatcher.wake("d"),
                }
            }
        };
        for _ in 0..3 {
            accept(Severity::P3).await;
        }
        let seen_now = || seen.lock().unwrap().clone();
        eventually("the first routine request is at the destination", || {
            seen_now() == ["P3"]
        })
        .await;
        accept(Severity::P1).await;
        eventually("the P1 is sent while the routine request is open", || {
            seen_now() == ["P3", "P1"]
        })
        .await;
        answer.add_permits(16);
        eventually("every request sent", || seen_now().len() == 4).await;
        stop.send(true).unwrap();
        running.await.unwrap();
    }
}
