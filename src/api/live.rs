//! Server-sent events: `GET /v1/broadcasts/{id}/events` streams one
//! broadcast's state changes, starting with a snapshot of every delivery and
//! ending with a `status` event once all are final; `GET /v1/events` streams
//! every broadcast's changes until the client leaves. When the server stops,
//! every stream gets a last `shutdown` event and ends, so no client can hold
//! the shutdown up; a client reconnects once herald is back, and a
//! broadcast's stream starts again with its snapshot.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;

use super::auth::authorize;
use super::wire::{DeliveryEvent, ObjectiveEvent, StatusEvent};
use super::{ApiError, AppState};
use crate::clock::now_ms;
use crate::config::Scope;
use crate::dispatch::objectives::ObjectiveDecided;
use crate::domain::{derive_status, format_rfc3339_ms, DeliveryState};
use crate::events::StateChange;
use crate::store::{BroadcastView, Store};

/// A comment line keeps idle streams open through proxies.
const KEEP_ALIVE_SECS: u64 = 15;

/// The last event of every stream when the server stops.
fn shutdown_event() -> Event {
    Event::default()
        .event("shutdown")
        .json_data(serde_json::json!({
            "reason": "herald is stopping; reconnect when it is back (a broadcast's stream starts again with its snapshot)"
        }))
        .expect("event serialises")
}

/// Resolves once the server is stopping.
async fn stopped(mut stopping: tokio::sync::watch::Receiver<bool>) {
    // The sender lives in AppState, which outlives every stream.
    let _ = stopping.wait_for(|stop| *stop).await;
}

fn delivery_event(change: &StateChange, now_ms: i64) -> Event {
    let p = &change.progress;
    let body = DeliveryEvent {
        broadcast_id: change.broadcast_id.clone(),
        destination: change.destination.clone(),
        state: p.state.as_str().to_owned(),
        summary: p.summary(),
        attempts_made: p.attempts_made,
        attempts_max: p.attempts_max,
        next_attempt_in_ms: p.due_at_ms.map(|due| (due - now_ms).max(0)),
        last_error: change.last_error.clone(),
        last_http_status: change.last_http_status,
        possible_duplicate: p.possible_duplicate,
        at: format_rfc3339_ms(change.at_ms),
    };
    Event::default()
        .event("delivery")
        .json_data(body)
        .expect("event serialises")
}

fn objective_event(decided: &ObjectiveDecided) -> Event {
    Event::default()
        .event("objective")
        .json_data(ObjectiveEvent {
            broadcast_id: decided.broadcast_id.clone(),
            state: decided.decision.as_str().to_owned(),
            escalated_to: decided.escalated_to.clone(),
            fallback_broadcast: decided.fallback_broadcast_id.clone(),
            meta_alert_broadcast: decided.meta_alert_broadcast_id.clone(),
            at: format_rfc3339_ms(decided.at_ms),
        })
        .expect("event serialises")
}

fn snapshot(view: &BroadcastView) -> Vec<StateChange> {
    view.deliveries
        .iter()
        .map(|d| StateChange {
            broadcast_id: view.id.clone(),
            destination: d.destination.clone(),
            progress: d.progress.clone(),
            last_error: d.last_error.clone(),
            last_http_status: d.last_http_status,
            at_ms: d.updated_at_ms,
        })
        .collect()
}

struct Watch<S> {
    app: Arc<AppState<S>>,
    id: String,
    changes: tokio::sync::broadcast::Receiver<Arc<StateChange>>,
    /// The objective decisions this server takes.
    decisions: tokio::sync::broadcast::Receiver<Arc<ObjectiveDecided>>,
    queue: VecDeque<Event>,
    /// Each delivery's latest state and when it changed; an older change
    /// arriving late (another task published it) is ignored.
    states: HashMap<String, (DeliveryState, i64)>,
    finished: bool,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl<S: Store> Watch<S> {
    /// Queues what is new in `changes`; marks the end when all are final.
    fn absorb(&mut self, changes: impl IntoIterator<Item = StateChange>) {
        let now = now_ms();
        for change in changes {
            if let Some((_, at_ms)) = self.states.get(&change.destination) {
                if change.at_ms < *at_ms {
                    continue;
                }
            }
            self.states.insert(
                change.destination.clone(),
                (change.progress.state, change.at_ms),
            );
            self.queue.push_back(delivery_event(&change, now));
        }
        if !self.finished && self.states.values().all(|(s, _)| s.is_final()) {
            let status = derive_status(self.states.values().map(|(s, _)| *s));
            self.queue.push_back(
                Event::default()
                    .event("status")
                    .json_data(StatusEvent {
                        broadcast_id: self.id.clone(),
                        status: status.as_str().to_owned(),
                    })
                    .expect("event serialises"),
            );
            self.finished = true;
        }
    }

    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some((Ok(event), self));
            }
            if self.finished {
                return None;
            }
            let received = tokio::select! {
                received = self.changes.recv() => received,
                Ok(decided) = self.decisions.recv() => {
                    if decided.broadcast_id == self.id {
                        self.queue.push_back(objective_event(&decided));
                    }
                    continue;
                }
                _ = stopped(self.stopping.clone()) => {
                    self.finished = true;
                    return Some((Ok(shutdown_event()), self));
                }
            };
            match received {
                Ok(change) if change.broadcast_id == self.id => self.absorb([(*change).clone()]),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Fell behind: read the truth again.
                    match self.app.store.broadcast(&self.id).await {
                        Ok(Some(view)) => self.absorb(snapshot(&view)),
                        _ => return None,
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

pub(super) async fn broadcast_events<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Read)?;
    let id = super::broadcasts::path_id(id)?;
    let id = super::broadcasts::resolve_id(&*app, &id).await?;
    // Subscribe before reading, so nothing between the two is missed.
    let changes = app.dispatcher.events().subscribe();
    let decisions = app.objectives.subscribe();
    let view = app.store.broadcast(&id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "broadcast_not_found",
            format!("no broadcast with id {id:?}"),
        )
    })?;
    let mut watch = Watch {
        app: app.clone(),
        id,
        changes,
        decisions,
        queue: VecDeque::new(),
        states: HashMap::new(),
        finished: false,
        stopping: app.stopping.subscribe(),
    };
    watch.absorb(snapshot(&view));
    let events = stream::unfold(watch, Watch::next);
    Ok(
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEP_ALIVE_SECS))),
    )
}

pub(super) async fn all_events<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Read)?;
    let changes = app.dispatcher.events().subscribe();
    let decisions = app.objectives.subscribe();
    let stopping = Some(app.stopping.subscribe());
    let state = (changes, decisions, stopping);
    let events = stream::unfold(state, |(mut changes, mut decisions, stopping)| async move {
        // None: the shutdown event went out, the stream is over.
        let stopping = stopping?;
        let received = tokio::select! {
            received = changes.recv() => received,
            Ok(decided) = decisions.recv() => {
                return Some((Ok(objective_event(&decided)), (changes, decisions, Some(stopping))));
            }
            _ = stopped(stopping.clone()) => {
                return Some((Ok(shutdown_event()), (changes, decisions, None)));
            }
        };
        let event = match received {
            Ok(change) => delivery_event(&change, now_ms()),
            Err(RecvError::Lagged(missed)) => Event::default().event("lagged").data(format!(
                "{missed} changes were missed; re-read the broadcasts you watch"
            )),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (changes, decisions, Some(stopping))))
    });
    Ok(
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(KEEP_ALIVE_SECS))),
    )
}
