//! `/v1/broadcasts`: create (with an optional `Idempotency-Key`), read, list,
//! and the operator actions retry and cancel.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use super::auth::{authorize, Caller};
use super::wire::{
    ActionRequest, ActionResult, Broadcast, BroadcastList, BroadcastSummary, BroadcastSummaryList,
    ObjectiveRequest, SendRequest,
};
use super::{parse_json, parse_json_bytes, ApiError, AppState};
use crate::clock::now_ms;
use crate::config::{Config, Scope};
use crate::domain::{
    new_broadcast_id, parse_duration_ms, BroadcastIdQuery, BroadcastStatus, DeliveryState, Message,
    Objective, Severity, BROADCAST_ID_PREFIX_CHARS_MIN, DESTINATIONS_PER_BROADCAST_MAX,
};
use crate::events::StateChange;
use crate::store::{
    BroadcastFilter, BroadcastView, DeliveryView, IngestKey, NewBroadcast, NewDelivery,
    OperatorAction, Store, StoreError,
};

/// `Idempotency-Key` values longer than this are refused.
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// Broadcasts per page of `GET /v1/broadcasts`: default and most.
const PAGE_SIZE_DEFAULT: usize = 50;
const PAGE_SIZE_MAX: usize = 200;
/// Broadcasts an ambiguous id prefix's error lists at most.
const PREFIX_CANDIDATES_MAX: usize = 10;

/// What a new broadcast asks for, once validated.
pub(super) struct Intent {
    pub message: Message,
    pub destinations: Vec<String>,
    /// The routes that picked `destinations`; empty when named.
    pub routes: Vec<String>,
    /// The request's objective, else the matched route's.
    pub objective: Option<Objective>,
}

impl Intent {
    pub fn from_request<S>(app: &AppState<S>, request: &SendRequest) -> Result<Intent, ApiError> {
        let severity = match request.severity.as_deref() {
            None => Severity::P3,
            Some(text) => Severity::parse(text)?,
        };
        let message = Message::new(
            &request.title,
            request.body.as_deref().unwrap_or(""),
            severity,
            request.thread.as_deref(),
        )?
        .resolving(request.resolved)?
        .with_details(request.details())?;
        let (destinations, routes) = targets(app, &message, &request.destinations)?;
        let objective = match &request.objective {
            Some(_) if message.resolved() => return Err(ApiError::invalid(
                "objective",
                "a resolve carries no objective (it reaches the fallbacks its thread escalated to)",
            )),
            Some(requested) => Some(objective_of(app, requested, &destinations)?),
            None if !routes.is_empty() => app.config.load().routing.objective_for(&message),
            None => None,
        };
        Ok(Intent {
            message,
            destinations,
            routes,
            objective,
        })
    }
}

/// The `objective` of a send, checked: names configured, groups expanded,
/// `of` among the broadcast's own destinations.
fn objective_of<S>(
    app: &AppState<S>,
    requested: &ObjectiveRequest,
    destinations: &[String],
) -> Result<Objective, ApiError> {
    let config = app.config.load();
    let within_ms = parse_duration_ms(&requested.confirm.within)
        .map_err(|reason| ApiError::invalid("objective.confirm.within", reason))?;
    let of = config
        .routing
        .expand(requested.confirm.of.iter().map(String::as_str));
    if !of.is_empty() {
        check_destinations(app, &of, "objective.confirm.of")?;
    }
    if let Some(outside) = of.iter().find(|name| !destinations.contains(name)) {
        return Err(ApiError::invalid(
            "objective.confirm.of",
            format!("{outside:?} is not one of this broadcast's destinations"),
        ));
    }
    let fallback = config
        .routing
        .expand(requested.fallback.iter().map(String::as_str));
    if !fallback.is_empty() {
        check_destinations(app, &fallback, "objective.fallback")?;
    }
    if let Some(name) = &requested.on_escalation {
        if config.destination(name).is_none() {
            return Err(ApiError::invalid(
                "objective.on_escalation",
                format!("{name:?} is not a configured destination"),
            ));
        }
    }
    Ok(Objective {
        any: requested.confirm.any,
        of,
        within_ms,
        fallback,
        on_escalation: requested.on_escalation.clone(),
    }
    .validated("objective")?)
}

/// The destinations a message goes to and the routes that picked them:
/// the named destinations and groups (expanded), or when none are named,
/// what the config's routes say. No route and no default route: 422.
pub(super) fn targets<S>(
    app: &AppState<S>,
    message: &Message,
    named: &[String],
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let config = app.config.load();
    if named.is_empty() {
        let Some(routed) = config.routing.route(message) else {
            return Err(no_route(message));
        };
        check_destinations(app, &routed.destinations, "destinations")?;
        return Ok((routed.destinations, routed.routes));
    }
    if !named.iter().any(|name| config.routing.is_group(name)) {
        // Destinations only (the usual send): they are the deliveries as
        // named, checked once.
        check_destinations(app, named, "destinations")?;
        return Ok((named.to_vec(), Vec::new()));
    }
    for (index, name) in named.iter().enumerate() {
        if config.routing.is_group(name) {
            if named[..index].contains(name) {
                return Err(ApiError::invalid(
                    format!("destinations[{index}]"),
                    format!("group {name:?} is named twice"),
                ));
            }
            continue;
        }
        check_destinations(app, std::slice::from_ref(name), "destinations")
            .map_err(|e| at_index(e, index))?;
        if named[..index].contains(name) {
            return Err(ApiError::invalid(
                format!("destinations[{index}]"),
                format!("destination {name:?} is named twice"),
            ));
        }
    }
    let destinations = config.routing.expand(named.iter().map(String::as_str));
    check_destinations(app, &destinations, "destinations")?;
    Ok((destinations, Vec::new()))
}

/// An error about `destinations[0]` of a one-name check, moved to the
/// index the name has in the request.
fn at_index(mut error: ApiError, index: usize) -> ApiError {
    if error.field.as_deref() == Some("destinations[0]") {
        error.field = Some(format!("destinations[{index}]"));
    }
    error
}

fn no_route(message: &Message) -> ApiError {
    let details = message.details();
    let labels: Vec<String> = details
        .labels
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "no_route",
        message: format!(
            "no route matches this message (severity {}, labels {{{}}}, source {}) and the config has no [default_route]: name destinations, or add a route",
            message.severity().as_str(),
            labels.join(", "),
            details.source.as_deref().unwrap_or("none"),
        ),
        field: Some("destinations".into()),
    }
}

/// Every name configured, none twice, at least one, not too many.
pub(super) fn check_destinations<S>(
    app: &AppState<S>,
    names: &[String],
    field: &str,
) -> Result<(), ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid(field, "name at least one destination"));
    }
    if names.len() > DESTINATIONS_PER_BROADCAST_MAX {
        return Err(ApiError::invalid(
            field,
            format!("at most {DESTINATIONS_PER_BROADCAST_MAX} destinations per broadcast"),
        ));
    }
    for (index, name) in names.iter().enumerate() {
        let field = format!("{field}[{index}]");
        let config = app.config.load();
        if config.destination(name).is_none() {
            let known: Vec<&str> = config
                .destinations
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            let groups: Vec<&str> = config.routing.groups.keys().map(String::as_str).collect();
            let groups = if groups.is_empty() {
                String::new()
            } else {
                format!("; groups: {}", groups.join(", "))
            };
            return Err(ApiError::invalid(
                field,
                format!(
                    "unknown destination {name:?}; configured: {}{groups}",
                    known.join(", ")
                ),
            ));
        }
        if names[..index].contains(name) {
            return Err(ApiError::invalid(
                field,
                format!("destination {name:?} is named twice"),
            ));
        }
    }
    Ok(())
}

/// Removes a key from the in-flight set when the request ends, however.
struct KeyInFlight<'a> {
    keys: &'a std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    entry: (String, String),
}

impl Drop for KeyInFlight<'_> {
    fn drop(&mut self) {
        self.keys
            .lock()
            .expect("key set poisoned")
            .remove(&self.entry);
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let field = "Idempotency-Key";
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid(field, "must be visible ASCII"))?
        .trim();
    if key.is_empty() || key.chars().count() > IDEMPOTENCY_KEY_CHARS_MAX {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} characters"),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// A replay of a keyed request: the first answer again, or (if the first
/// answer was not kept) the broadcast as it is now.
async fn replay<S: Store>(
    app: &AppState<S>,
    broadcast_id: &str,
    response: Option<String>,
) -> Result<Response, ApiError> {
    let body = match response {
        Some(body) => body,
        None => {
            let view = app.store.broadcast(broadcast_id).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the keyed broadcast is missing",
                )
            })?;
            serde_json::to_string(&Broadcast::from_view(&view, now_ms())).expect("serialises")
        }
    };
    Ok(accepted_response(broadcast_id, body))
}

fn accepted_response(id: &str, body: String) -> Response {
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/broadcasts/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub(super) async fn create<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let caller = authorize(&app.config.load(), &headers, Scope::Send)?;
    let key = idempotency_key(&headers)?;
    let bytes = super::read_body(body)?;
    let Some(key) = key else {
        let request: SendRequest = parse_json_bytes(&bytes)?;
        let intent = Intent::from_request(&app, &request)?;
        let (broadcast, body) = accept(&app, intent, None).await?;
        return Ok(accepted_response(&broadcast.id, body));
    };
    let entry = (caller.name.clone(), key.clone());
    if !app
        .keys_in_flight
        .lock()
        .expect("key set poisoned")
        .insert(entry.clone())
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        ));
    }
    let _in_flight = KeyInFlight {
        keys: &app.keys_in_flight,
        entry,
    };
    let body_sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = now_ms();
    if let Some(record) = app.store.ingest_record(&caller.name, &key, now).await? {
        if record.body_sha256 != body_sha256 {
            return Err(key_reused());
        }
        return replay(&app, &record.broadcast_id, record.response).await;
    }
    let request: SendRequest = parse_json_bytes(&bytes)?;
    let intent = Intent::from_request(&app, &request)?;
    let ingest = IngestKey {
        caller: caller.name.clone(),
        key: key.clone(),
        body_sha256: body_sha256.clone(),
        expires_before_ms: now.saturating_add(app.config.load().idempotency_retention_ms as i64),
    };
    match accept(&app, intent, Some(ingest)).await {
        Ok((broadcast, body)) => {
            // Kept for replays; if this write is lost, replays answer with
            // the broadcast as it is then.
            if let Err(error) = app
                .store
                .save_ingest_response(&caller.name, &key, body.clone())
                .await
            {
                tracing::warn!(%error, "cannot keep the first answer of a keyed request");
            }
            Ok(accepted_response(&broadcast.id, body))
        }
        Err(AcceptError::KeyTaken) => match app
            .store
            .ingest_record(&caller.name, &key, now_ms())
            .await?
        {
            Some(record) if record.body_sha256 == body_sha256 => {
                replay(&app, &record.broadcast_id, record.response).await
            }
            _ => Err(key_reused()),
        },
        Err(AcceptError::Api(error)) => Err(error),
    }
}

fn key_reused() -> ApiError {
    ApiError {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "idempotency_key_reused",
        message: "this Idempotency-Key was used for a different request body".into(),
        field: Some("Idempotency-Key".into()),
    }
}

pub(super) enum AcceptError {
    KeyTaken,
    Api(ApiError),
}

impl From<ApiError> for AcceptError {
    fn from(e: ApiError) -> AcceptError {
        AcceptError::Api(e)
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> ApiError {
        match e {
            AcceptError::Api(e) => e,
            AcceptError::KeyTaken => key_reused(),
        }
    }
}

/// Writes a broadcast and its deliveries in one transaction, hands leased
/// deliveries to workers, and returns the answer (and its JSON).
///
/// Runs on its own task: if the request is dropped (client gone, request
/// timeout) after the insert was queued, the commit still happens, so the
/// hand-off and the events must still happen too, or leased deliveries
/// would wait for the next restart.
pub(super) async fn accept<S: Store>(
    app: &Arc<AppState<S>>,
    intent: Intent,
    ingest_key: Option<IngestKey>,
) -> Result<(Broadcast, String), AcceptError> {
    let app = app.clone();
    tokio::spawn(async move { accept_now(&app, intent, ingest_key).await })
        .await
        .map_err(|e| {
            AcceptError::Api(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("accepting the broadcast failed: {e}"),
            ))
        })?
}

async fn accept_now<S: Store>(
    app: &AppState<S>,
    intent: Intent,
    ingest_key: Option<IngestKey>,
) -> Result<(Broadcast, String), AcceptError> {
    // Checked against an earlier snapshot of the config: a reload may have
    // removed a destination since.
    let config = app.config.load();
    let mut destinations = intent.destinations;
    // Resolve follows escalation: the fallback destinations the thread was
    // escalated to get its resolve too (and no other fallback does).
    if let (true, Some(thread)) = (intent.message.resolved(), intent.message.thread()) {
        for name in app
            .store
            .escalated_destinations(thread)
            .await
            .map_err(ApiError::from)?
        {
            if !destinations.contains(&name) && config.destination(&name).is_some() {
                destinations.push(name);
            }
        }
    }
    let mut deliveries: Vec<NewDelivery> = destinations
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let destination = config.destination(name).ok_or_else(|| {
                ApiError::invalid(
                    format!("destinations[{index}]"),
                    format!("destination {name:?} was removed by a configuration reload"),
                )
            })?;
            Ok(NewDelivery {
                destination: name.clone(),
                policy: destination.policy,
                lease_now: false,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    drop(config);
    // Where a worker slot is free, the delivery is leased in the insert's
    // transaction and its first attempt starts without a claim round trip.
    let severity = intent.message.severity();
    let mut slots: Vec<_> = deliveries
        .iter_mut()
        .map(|d| {
            let slot = app.dispatcher.reserve_slot(&d.destination, severity);
            d.lease_now = slot.is_some();
            slot
        })
        .collect();
    let created_at_ms = now_ms();
    let new = NewBroadcast {
        id: new_broadcast_id(created_at_ms, &mut rand::rng()),
        message: intent.message,
        created_at_ms,
        routes: intent.routes.clone(),
        deliveries,
        ingest_key,
        objective: intent.objective,
    };
    let has_objective = new.objective.is_some();
    let id = new.id.clone();
    let message = new.message.clone();
    let mut inserted = match app.store.insert_broadcast(new).await {
        Ok(inserted) => inserted,
        Err(StoreError::IngestKeyTaken(_)) => return Err(AcceptError::KeyTaken),
        Err(error) => return Err(ApiError::from(error).into()),
    };
    app.accepted.fetch_add(1, Ordering::Relaxed);
    if has_objective {
        app.objectives.deadline_added();
    }
    for (delivery, slot) in inserted.iter_mut().zip(slots.iter_mut()) {
        app.dispatcher.events().publish(|| StateChange {
            broadcast_id: id.clone(),
            destination: delivery.destination.clone(),
            progress: delivery.progress.clone(),
            last_error: None,
            last_http_status: None,
            at_ms: created_at_ms,
        });
        match (delivery.leased.take(), slot.take()) {
            (Some(leased), Some(slot)) => app.dispatcher.hand_off(leased, slot),
            // Not leased (waiting behind its thread, or no slot was free):
            // the lane claims it; the unused slot is released here.
            _ if severity == Severity::P1 => app.dispatcher.wake(&delivery.destination),
            _ => app.dispatcher.wake_routine(&delivery.destination),
        }
    }
    tracing::info!(broadcast = %id, destinations = inserted.len(), "broadcast accepted");
    let objective = match has_objective {
        // Read back as stored (the deadline and the status come from it).
        true => app
            .store
            .broadcast(&id)
            .await
            .ok()
            .flatten()
            .and_then(|v| v.objective),
        false => None,
    };
    let view = BroadcastView {
        id: id.clone(),
        message,
        created_at_ms,
        routes: intent.routes,
        deliveries: inserted
            .into_iter()
            .map(|d| DeliveryView {
                progress: d.progress,
                destination: d.destination,
                idempotency_key: d.idempotency_key,
                last_error: None,
                last_http_status: None,
                updated_at_ms: created_at_ms,
                remote_ref: None,
                attempts: Vec::new(),
            })
            .collect(),
        objective,
    };
    let broadcast = Broadcast::from_view(&view, created_at_ms);
    let body = serde_json::to_string(&broadcast).expect("serialises");
    Ok((broadcast, body))
}

/// The `{id}` of a route, or the JSON error for an unreadable one.
pub(super) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let id = path
        .map(|Path(id)| id)
        .map_err(|rejection| ApiError::invalid("id", rejection.body_text()))?;
    if id.contains('\0') {
        return Err(ApiError::invalid("id", crate::domain::NUL_REFUSED));
    }
    Ok(id)
}

pub(super) async fn get<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Broadcast>, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Read)?;
    let id = path_id(id)?;
    let view = find(&*app, &id).await?;
    Ok(Json(with_remote_urls(
        Broadcast::from_view(&view, now_ms()),
        &app.config.load(),
    )))
}

/// The broadcast with each delivery's `remote_url`, where its destination's
/// kind can build one from its settings and the delivery's `remote_ref`.
pub(super) fn with_remote_urls(mut broadcast: Broadcast, config: &Config) -> Broadcast {
    for delivery in &mut broadcast.deliveries {
        delivery.remote_url = delivery.remote_ref.as_deref().and_then(|remote_ref| {
            let destination = config.destination(&delivery.destination)?;
            crate::kinds::remote_url(&destination.target, remote_ref)
        });
    }
    broadcast
}

pub(super) async fn find<S: Store>(app: &AppState<S>, id: &str) -> Result<BroadcastView, ApiError> {
    let id = resolve_id(app, id).await?;
    app.store
        .broadcast(&id)
        .await?
        .ok_or_else(|| not_found(&id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "broadcast_not_found",
        format!("no broadcast with id {id:?}"),
    )
}

/// The whole id of the one broadcast `typed` names: a whole id (any case),
/// or its start when no other broadcast's id starts so, as with git.
pub(super) async fn resolve_id<S: Store>(
    app: &AppState<S>,
    typed: &str,
) -> Result<String, ApiError> {
    let prefix = match BroadcastIdQuery::parse(typed) {
        BroadcastIdQuery::Whole(id) => return Ok(id),
        BroadcastIdQuery::Impossible => return Err(not_found(typed)),
        BroadcastIdQuery::TooShort => {
            return Err(ApiError::invalid(
                "id",
                format!(
                    "{typed:?} is too short to name a broadcast: give at least \
                     {BROADCAST_ID_PREFIX_CHARS_MIN} characters of its id"
                ),
            ))
        }
        BroadcastIdQuery::Prefix(prefix) => prefix,
    };
    let mut ids = app
        .store
        .broadcast_ids_starting_with(&prefix, PREFIX_CANDIDATES_MAX + 1)
        .await?;
    match ids.len() {
        0 => Err(not_found(typed)),
        1 => Ok(ids.remove(0)),
        n => {
            let more = if n > PREFIX_CANDIDATES_MAX {
                ids.truncate(PREFIX_CANDIDATES_MAX);
                ", and more"
            } else {
                ""
            };
            Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "ambiguous_id",
                message: format!(
                    "{typed:?} starts the ids of several broadcasts: {}{more}; give more characters",
                    ids.join(", ")
                ),
                field: Some("id".into()),
            })
        }
    }
}

/// `since`: milliseconds since the epoch, or a span back from now (`90s`,
/// `15m`, `2h`, `7d`).
fn parse_since(text: &str, now_ms: i64) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let (number, unit_ms) = [
        ("s", 1_000i64),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ]
    .into_iter()
    .find_map(|(suffix, unit_ms)| text.strip_suffix(suffix).map(|n| (n, unit_ms)))?;
    let n: i64 = number.parse().ok().filter(|n| *n >= 0)?;
    now_ms.checked_sub(n.checked_mul(unit_ms)?)
}

/// What `GET /v1/broadcasts` answers each broadcast with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListView {
    /// `Broadcast`, as `GET /v1/broadcasts/{id}` without the attempts.
    Full,
    /// `BroadcastSummary`: no body, details nor attempts.
    Summary,
}

pub(super) async fn list<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&app.config.load(), &headers, Scope::Read)?;
    let Query(query) =
        query.map_err(|rejection| ApiError::invalid("query", rejection.body_text()))?;
    let mut filter = BroadcastFilter {
        limit: PAGE_SIZE_DEFAULT,
        ..BroadcastFilter::default()
    };
    if let Some((name, _)) = query
        .iter()
        .find(|(n, v)| n.contains('\0') || v.contains('\0'))
    {
        return Err(ApiError::invalid(name.clone(), crate::domain::NUL_REFUSED));
    }
    let mut view = ListView::Full;
    for (name, value) in &query {
        match name.as_str() {
            // A broadcast's status, or a delivery state: the broadcasts
            // with at least one delivery in that state.
            "status" => match value.as_str() {
                "delivering" => filter.status = Some(BroadcastStatus::Delivering),
                "converged" => filter.status = Some(BroadcastStatus::Converged),
                "partial" => filter.status = Some(BroadcastStatus::Partial),
                other => match DeliveryState::parse(other) {
                    Some(state) => filter.delivery_state = Some(state),
                    None => {
                        let states: Vec<&str> =
                            DeliveryState::ALL.iter().map(|s| s.as_str()).collect();
                        return Err(ApiError::invalid(
                            "status",
                            format!(
                                "unknown status {other:?}; use a broadcast's status (delivering, \
                                 converged, partial) or a delivery's state ({})",
                                states.join(", ")
                            ),
                        ));
                    }
                },
            },
            "destination" => filter.destination = Some(value.clone()),
            "thread" => filter.thread = Some(value.clone()),
            "since" => {
                filter.created_since_ms = Some(parse_since(value, now_ms()).ok_or_else(|| {
                    ApiError::invalid(
                        "since",
                        "use milliseconds since the epoch or a span such as 15m, 2h, 7d",
                    )
                })?)
            }
            "cursor" => filter.before_id = Some(value.clone()),
            "limit" => {
                filter.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=PAGE_SIZE_MAX).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid("limit", format!("must be 1 to {PAGE_SIZE_MAX}"))
                    })?
            }
            "view" => {
                view = match value.as_str() {
                    "full" => ListView::Full,
                    "summary" => ListView::Summary,
                    other => {
                        return Err(ApiError::invalid(
                            "view",
                            format!(
                                "unknown view {other:?}; use full (the default) or summary \
                                 (no body, details nor attempts)"
                            ),
                        ))
                    }
                }
            }
            other => return Err(ApiError::invalid(
                other,
                "unknown parameter; use status, destination, thread, since, cursor, limit, view",
            )),
        }
    }
    let limit = filter.limit;
    let views = app.store.list_broadcasts(filter).await?;
    let now = now_ms();
    let next_cursor = (views.len() == limit)
        .then(|| views.last().map(|v| v.id.clone()))
        .flatten();
    Ok(match view {
        ListView::Full => {
            let config = app.config.load();
            Json(BroadcastList {
                broadcasts: views
                    .iter()
                    .map(|v| with_remote_urls(Broadcast::from_view(v, now), &config))
                    .collect(),
                next_cursor,
            })
            .into_response()
        }
        ListView::Summary => Json(BroadcastSummaryList {
            broadcasts: views
                .iter()
                .map(|v| BroadcastSummary::from_view(v, now))
                .collect(),
            next_cursor,
        })
        .into_response(),
    })
}

pub(super) async fn retry<S: Store>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResult>, ApiError> {
    operate(state, headers, id, body, OperatorAction::Retry).await
}

pub(super) async fn cancel<S: Store>(
    state: State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ActionResult>, ApiError> {
    operate(state, headers, id, body, OperatorAction::Cancel).await
}

/// Retry or cancel: idempotent; answers with the broadcast's new state and
/// the destinations whose delivery changed (none when nothing applied).
async fn operate<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    action: OperatorAction,
) -> Result<Json<ActionResult>, ApiError> {
    let Caller { name: caller } = authorize(&app.config.load(), &headers, Scope::Operate)?;
    let id = resolve_id(&*app, &path_id(id)?).await?;
    let bytes = super::read_body(body)?;
    let request: ActionRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        ActionRequest::default()
    } else {
        parse_json(Ok(bytes))?
    };
    let before = find(&*app, &id).await?;
    for (index, name) in request.destinations.iter().enumerate() {
        if !before.deliveries.iter().any(|d| d.destination == *name) {
            return Err(ApiError::invalid(
                format!("destinations[{index}]"),
                format!("{name:?} is not a destination of broadcast {id}"),
            ));
        }
    }
    let config = app.config.load();
    let policies = before
        .deliveries
        .iter()
        .filter_map(|d| {
            config
                .destination(&d.destination)
                .map(|c| (d.destination.clone(), c.policy))
        })
        .collect();
    let changed = app
        .store
        .operator_action(&id, action, request.destinations, policies, now_ms())
        .await?
        .unwrap_or_default();
    let after = find(&*app, &id).await?;
    for delivery in after
        .deliveries
        .iter()
        .filter(|d| changed.contains(&d.destination))
    {
        app.dispatcher.events().publish(|| StateChange {
            broadcast_id: id.clone(),
            destination: delivery.destination.clone(),
            progress: delivery.progress.clone(),
            last_error: delivery.last_error.clone(),
            last_http_status: delivery.last_http_status,
            at_ms: delivery.updated_at_ms,
        });
        if delivery.progress.state.is_final() {
            app.dispatcher
                .record_final(&delivery.destination, delivery.progress.state);
        }
        app.dispatcher.wake(&delivery.destination);
    }
    tracing::info!(broadcast = %id, %caller, action = ?action, destinations = ?changed, "operator action");
    Ok(Json(ActionResult {
        action: match action {
            OperatorAction::Retry => "retry",
            OperatorAction::Cancel => "cancel",
        }
        .to_owned(),
        changed,
        broadcast: with_remote_urls(Broadcast::from_view(&after, now_ms()), &config),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_epoch_ms_or_a_span_and_refuses_the_rest() {
        assert_eq!(parse_since("1700000000000", 0), Some(1_700_000_000_000));
        assert_eq!(parse_since("15m", 1_000_000), Some(100_000));
        assert_eq!(parse_since("2h", 10_000_000), Some(2_800_000));
        for bad in ["5é", "m", "-5m", "9999999999999999999d", "", "3w"] {
            assert_eq!(parse_since(bad, 0), None, "{bad}");
        }
    }
}
