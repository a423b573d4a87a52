//! The deadline watcher: one task per process that sleeps until the
//! earliest undecided objective's deadline, then decides each objective
//! whose deadline has passed: met (enough of its destinations confirmed)
//! or escalated (the fallback destinations get the message, the
//! `on_escalation` destination a meta-alert). The store commits a decision
//! only while none is recorded, with the child broadcasts in the same
//! transaction, so whichever process or node gets there first decides,
//! once; the others find it decided and write nothing.
//!
//! No busy polling: with no objective pending the task sleeps until a new
//! one is accepted here (`deadline_added`), or for `idle_poll_ms` (on a
//! shared database, where another node may have accepted one and died).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::Dispatcher;
use crate::clock::now_ms;
use crate::domain::{
    met_at_ms, meta_alert_message, new_broadcast_id, ObjectiveDecision, ObjectiveInput,
    RetryPolicy, Severity,
};
use crate::events::StateChange;
use crate::store::{NewBroadcast, NewDelivery, ObjectiveVerdict, Store, StoreError};

/// Objectives decided per store round trip at most; a full batch is
/// followed at once by the next.
const OBJECTIVES_BATCH_MAX: usize = 64;
/// After a store error, the watcher tries again this much later.
const RETRY_AFTER_ERROR_MS: u64 = 1_000;
/// With nothing pending on a database of its own, the watcher still looks
/// this often (a new objective wakes it at once).
pub const OBJECTIVES_IDLE_POLL_MS_SQLITE: u64 = 3_600_000;
/// On a shared database: another node may accept an objective and stop
/// before its deadline; every node looks at least this often.
pub const OBJECTIVES_IDLE_POLL_MS_SHARED: u64 = 5_000;
/// Upper bounds (seconds) of the time-to-objective histogram's buckets.
const TIME_TO_OBJECTIVE_BUCKETS_S: [u64; 11] = [1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600];

/// Decisions kept for event-stream subscribers that are behind, at most.
const DECISIONS_BUFFERED_MAX: usize = 256;

/// A decision this process took, for the event streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectiveDecided {
    pub broadcast_id: String,
    pub decision: ObjectiveDecision,
    pub escalated_to: Vec<String>,
    pub fallback_broadcast_id: Option<String>,
    pub meta_alert_broadcast_id: Option<String>,
    pub at_ms: i64,
}

/// Shared between the API (which wakes the watcher, streams its
/// decisions) and `/metrics`.
pub struct ObjectiveSignals {
    wake: Notify,
    decisions: tokio::sync::broadcast::Sender<Arc<ObjectiveDecided>>,
    met_total: AtomicU64,
    escalated_total: AtomicU64,
    /// Decisions this process found already taken by another.
    decided_elsewhere_total: AtomicU64,
    time_to_met_buckets: [AtomicU64; TIME_TO_OBJECTIVE_BUCKETS_S.len()],
    time_to_met_count: AtomicU64,
    time_to_met_sum_ms: AtomicU64,
}

impl Default for ObjectiveSignals {
    fn default() -> Self {
        ObjectiveSignals {
            wake: Notify::new(),
            decisions: tokio::sync::broadcast::channel(DECISIONS_BUFFERED_MAX).0,
            met_total: AtomicU64::new(0),
            escalated_total: AtomicU64::new(0),
            decided_elsewhere_total: AtomicU64::new(0),
            time_to_met_buckets: Default::default(),
            time_to_met_count: AtomicU64::new(0),
            time_to_met_sum_ms: AtomicU64::new(0),
        }
    }
}

impl ObjectiveSignals {
    /// The decisions this process takes from now on (a decision taken by
    /// another node shows in the broadcast's view, not here).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<ObjectiveDecided>> {
        self.decisions.subscribe()
    }

    /// A broadcast with an objective was committed: its deadline may be
    /// the earliest.
    pub fn deadline_added(&self) {
        self.wake.notify_one();
    }

    fn observe_met(&self, elapsed_ms: i64) {
        let elapsed_ms = elapsed_ms.max(0) as u64;
        for (bucket, bound_s) in self
            .time_to_met_buckets
            .iter()
            .zip(TIME_TO_OBJECTIVE_BUCKETS_S)
        {
            if elapsed_ms <= bound_s * 1_000 {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.time_to_met_count.fetch_add(1, Ordering::Relaxed);
        self.time_to_met_sum_ms
            .fetch_add(elapsed_ms, Ordering::Relaxed);
    }

    /// `herald_objectives_total{outcome}` and the time-to-objective
    /// histogram, in Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP herald_objectives_total Delivery objectives decided by this process, by outcome.\n\
             # TYPE herald_objectives_total counter"
        );
        for (outcome, count) in [
            ("met", &self.met_total),
            ("escalated", &self.escalated_total),
        ] {
            let _ = writeln!(
                out,
                "herald_objectives_total{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP herald_objectives_decided_elsewhere_total Deadlines this process saw pass that another process or node had already decided.\n\
             # TYPE herald_objectives_decided_elsewhere_total counter\n\
             herald_objectives_decided_elsewhere_total {}",
            self.decided_elsewhere_total.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP herald_time_to_objective_seconds From acceptance to the confirmation that met the objective (counted when the deadline is decided).\n\
             # TYPE herald_time_to_objective_seconds histogram"
        );
        for (bucket, bound_s) in self
            .time_to_met_buckets
            .iter()
            .zip(TIME_TO_OBJECTIVE_BUCKETS_S)
        {
            let _ = writeln!(
                out,
                "herald_time_to_objective_seconds_bucket{{le=\"{bound_s}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.time_to_met_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "herald_time_to_objective_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             herald_time_to_objective_seconds_sum {}\n\
             herald_time_to_objective_seconds_count {count}",
            self.time_to_met_sum_ms.load(Ordering::Relaxed) as f64 / 1_000.0
        );
    }
}

/// The retry policy of a destination configured now; `None` when it is
/// not (a fallback removed by a reload is skipped).
pub type PolicyOf = Arc<dyn Fn(&str) -> Option<RetryPolicy> + Send + Sync>;

pub struct ObjectiveWatcher<S> {
    pub store: Arc<S>,
    pub dispatcher: Arc<Dispatcher<S>>,
    pub signals: Arc<ObjectiveSignals>,
    pub policy_of: PolicyOf,
    pub idle_poll_ms: u64,
}

impl<S: Store> ObjectiveWatcher<S> {
    /// Runs until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let sleep_ms = self.decide_due().await;
            if sleep_ms == 0 {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = self.signals.wake.notified() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Decides what is due; returns how long to sleep before looking again.
    async fn decide_due(&self) -> u64 {
        let now = now_ms();
        let due = match self.store.objectives_due(now, OBJECTIVES_BATCH_MAX).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read the objectives due; trying again");
                return RETRY_AFTER_ERROR_MS;
            }
        };
        let mut failed = false;
        for id in &due.due {
            if let Err(error) = self.decide(id).await {
                tracing::warn!(broadcast = %id, %error, "cannot decide the objective; trying again");
                failed = true;
            }
        }
        if failed {
            return RETRY_AFTER_ERROR_MS;
        }
        if due.due.len() == OBJECTIVES_BATCH_MAX {
            return 0;
        }
        match due.next_deadline_ms {
            // One millisecond past it, so the deadline has passed on waking.
            Some(deadline) => ((deadline - now_ms()).max(0) as u64 + 1).min(self.idle_poll_ms),
            None => self.idle_poll_ms,
        }
    }

    /// One objective whose deadline passed: met, or escalated with its
    /// fallback and meta-alert, committed once.
    async fn decide(&self, broadcast_id: &str) -> Result<(), StoreError> {
        let now = now_ms();
        let view = self.store.broadcast(broadcast_id).await?;
        let Some((view, record)) = view.and_then(|v| {
            let record = v.objective.clone()?;
            Some((v, record))
        }) else {
            return Ok(());
        };
        if record.decision.is_some() {
            return Ok(());
        }
        let inputs: Vec<ObjectiveInput<'_>> = view
            .deliveries
            .iter()
            .map(|d| ObjectiveInput {
                destination: &d.destination,
                state: d.progress.state,
                updated_at_ms: d.updated_at_ms,
                summary: d.progress.summary(),
                last_error: d.last_error.as_deref(),
            })
            .collect();
        let objective = &record.objective;
        let met_at = met_at_ms(objective, &inputs);
        let mut verdict = ObjectiveVerdict {
            broadcast_id: broadcast_id.to_owned(),
            decided_at_ms: now,
            decision: ObjectiveDecision::Met,
            escalated_to: Vec::new(),
            fallback: None,
            meta_alert: None,
        };
        if met_at.is_none() {
            verdict.decision = ObjectiveDecision::Escalated;
            let mut rng = rand::rng();
            let fallback: Vec<NewDelivery> = objective
                .fallback
                .iter()
                .filter_map(|name| {
                    let policy = (self.policy_of)(name);
                    if policy.is_none() {
                        tracing::warn!(broadcast = %broadcast_id, destination = %name,
                            "a fallback destination is no longer configured; escalating without it");
                    }
                    Some(NewDelivery {
                        destination: name.clone(),
                        policy: policy?,
                        lease_now: false,
                    })
                })
                .collect();
            verdict.escalated_to = fallback.iter().map(|d| d.destination.clone()).collect();
            if !fallback.is_empty() {
                verdict.fallback = Some(NewBroadcast {
                    id: new_broadcast_id(now, &mut rng),
                    message: view.message.clone(),
                    created_at_ms: now,
                    routes: Vec::new(),
                    deliveries: fallback,
                    ingest_key: None,
                    objective: None,
                });
            }
            if let Some(name) = &objective.on_escalation {
                match (self.policy_of)(name) {
                    Some(policy) => {
                        let message = meta_alert_message(
                            broadcast_id,
                            &view.message,
                            objective,
                            &inputs,
                            &verdict.escalated_to,
                        )
                        .map_err(|e| StoreError::Corrupt(format!("the meta-alert: {e}")))?;
                        verdict.meta_alert = Some(NewBroadcast {
                            id: new_broadcast_id(now, &mut rng),
                            message,
                            created_at_ms: now,
                            routes: Vec::new(),
                            deliveries: vec![NewDelivery {
                                destination: name.clone(),
                                policy,
                                lease_now: false,
                            }],
                            ingest_key: None,
                            objective: None,
                        });
                    }
                    None => tracing::warn!(broadcast = %broadcast_id, destination = %name,
                        "the on_escalation destination is no longer configured; no meta-alert"),
                }
            }
        }
        let severity = view.message.severity();
        let Some(children) = self.store.decide_objective(verdict.clone()).await? else {
            self.signals
                .decided_elsewhere_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(broadcast = %broadcast_id, "objective already decided elsewhere");
            return Ok(());
        };
        match verdict.decision {
            ObjectiveDecision::Met => {
                self.signals.met_total.fetch_add(1, Ordering::Relaxed);
                if let Some(met_at) = met_at {
                    self.signals.observe_met(met_at - view.created_at_ms);
                }
                tracing::info!(broadcast = %broadcast_id, "delivery objective met");
            }
            ObjectiveDecision::Escalated => {
                self.signals.escalated_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    broadcast = %broadcast_id,
                    escalated_to = %verdict.escalated_to.join(","),
                    meta_alert_to = objective.on_escalation.as_deref().unwrap_or(""),
                    "delivery objective missed: escalated"
                );
            }
        }
        if self.signals.decisions.receiver_count() > 0 {
            // A subscriber gone since the check is not an error.
            let _ = self.signals.decisions.send(Arc::new(ObjectiveDecided {
                broadcast_id: broadcast_id.to_owned(),
                decision: verdict.decision,
                escalated_to: verdict.escalated_to.clone(),
                fallback_broadcast_id: verdict.fallback.as_ref().map(|b| b.id.clone()),
                meta_alert_broadcast_id: verdict.meta_alert.as_ref().map(|b| b.id.clone()),
                at_ms: now,
            }));
        }
        for (child_id, deliveries) in children {
            for delivery in deliveries {
                self.dispatcher.events().publish(|| StateChange {
                    broadcast_id: child_id.clone(),
                    destination: delivery.destination.clone(),
                    progress: delivery.progress.clone(),
                    last_error: None,
                    last_http_status: None,
                    at_ms: now,
                });
                if severity == Severity::P1 {
                    self.dispatcher.wake(&delivery.destination);
                } else {
                    self.dispatcher.wake_routine(&delivery.destination);
                }
            }
        }
        Ok(())
    }
}
