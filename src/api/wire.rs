//! The JSON shapes of the HTTP API, shared by the server and the CLI client.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::domain::{derive_status, format_rfc3339_ms, DeliveryState, Field, Link, MessageDetails};
use crate::store::{BroadcastView, DeliveryView};

/// `POST /v1/broadcasts`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    /// This broadcast resolves its thread's incident (needs `thread`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolved: bool,
    /// Destinations and groups; none: the config's routes pick them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// String map: service, environment, team, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Runbook, dashboard, incident page: http or https only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Ordered name/value facts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    /// Who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Short text for channels that show little (SMS, push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A delivery objective (as a route's `confirm`, `fallback`,
    /// `on_escalation`); none: the matched route's, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<ObjectiveRequest>,
}

/// `objective` of `POST /v1/broadcasts`: the keys of a route's objective.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveRequest {
    pub confirm: ConfirmRequest,
    /// Destinations and groups the message goes to when the deadline passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// The destination of the meta-alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_escalation: Option<String>,
}

/// `confirm = { any = 1, of = [...], within = "60s" }`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub any: u32,
    pub of: Vec<String>,
    pub within: String,
}

/// A broadcast's objective as the API shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectiveView {
    /// `met`, `pending` or `escalated` (an escalated objective met later
    /// stays `escalated`, with `met_at` set).
    pub state: String,
    /// "pending (1 of 3, 42 s left)", "met at ...", "escalated at ... to [...]".
    pub summary: String,
    pub any: u32,
    pub of: Vec<String>,
    pub within_ms: i64,
    pub deadline: String,
    /// Milliseconds from the server's now to the deadline (0 once past).
    pub deadline_in_ms: i64,
    /// The destinations of `of` that confirmed.
    pub confirmed: Vec<String>,
    pub met_at: Option<String>,
    pub escalated_at: Option<String>,
    pub escalated_to: Vec<String>,
    pub fallback: Vec<String>,
    pub on_escalation: Option<String>,
    /// The child broadcast that carried the message to `escalated_to`.
    pub fallback_broadcast: Option<String>,
    /// The child broadcast that carried the meta-alert.
    pub meta_alert_broadcast: Option<String>,
}

impl ObjectiveView {
    pub fn from_view(view: &BroadcastView, now_ms: i64) -> Option<ObjectiveView> {
        let record = view.objective.as_ref()?;
        let inputs: Vec<crate::domain::ObjectiveInput<'_>> = view
            .deliveries
            .iter()
            .map(|d| crate::domain::ObjectiveInput {
                destination: &d.destination,
                state: d.progress.state,
                updated_at_ms: d.updated_at_ms,
                summary: d.progress.summary(),
                last_error: d.last_error.as_deref(),
            })
            .collect();
        let status = crate::domain::objective_status(record, &inputs, now_ms);
        let objective = &record.objective;
        Some(ObjectiveView {
            state: status.state.to_owned(),
            summary: status.summary,
            any: objective.any,
            of: objective.of.clone(),
            within_ms: objective.within_ms,
            deadline: format_rfc3339_ms(record.deadline_ms),
            deadline_in_ms: (record.deadline_ms - now_ms).max(0),
            confirmed: status.confirmed,
            met_at: status.met_at_ms.map(format_rfc3339_ms),
            escalated_at: status.escalated_at_ms.map(format_rfc3339_ms),
            escalated_to: record.escalated_to.clone(),
            fallback: objective.fallback.clone(),
            on_escalation: objective.on_escalation.clone(),
            fallback_broadcast: record.fallback_broadcast_id.clone(),
            meta_alert_broadcast: record.meta_alert_broadcast_id.clone(),
        })
    }
}

/// `event: objective` on the event streams: the decision this server took
/// when an objective's deadline passed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectiveEvent {
    pub broadcast_id: String,
    /// `met` or `escalated`.
    pub state: String,
    pub escalated_to: Vec<String>,
    pub fallback_broadcast: Option<String>,
    pub meta_alert_broadcast: Option<String>,
    pub at: String,
}

impl SendRequest {
    /// The labels, links, fields, source and summary, not yet checked.
    pub fn details(&self) -> MessageDetails {
        MessageDetails {
            labels: self.labels.clone(),
            links: self.links.clone(),
            fields: self.fields.clone(),
            source: self.source.clone(),
            summary: self.summary.clone(),
        }
    }
}

/// Answer of `POST /v1/preview`: where the message would go.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preview {
    /// The routes that matched, in order; empty when destinations were named.
    pub routes: Vec<String>,
    /// The destinations, groups expanded, in the order a send would use.
    pub destinations: Vec<PreviewDestination>,
}

/// One destination of a preview: the requests it would be sent, rendered
/// by its template, or why its template failed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviewDestination {
    pub name: String,
    /// Its kind: `slack`, `teams`, `jira`, `pagerduty`, `discord`,
    /// `webhook`, `matrix`, `sms`, `telegram`, `zulip`, ...
    pub kind: String,
    /// The requests a first attempt sends, in order (Slack's resolve edits
    /// the first message, then replies); empty for a kind that does not
    /// render yet, or when `error` is set.
    #[serde(default)]
    pub requests: Vec<PreviewRequest>,
    /// The destination's template did not render this message: the
    /// delivery would fail with this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One request of a preview: what it calls and its exact body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviewRequest {
    /// The API call or path, never the credential a URL may hold
    /// (`chat.postMessage`, `POST webhook`).
    pub call: String,
    /// The request body exactly as it would be sent: UTF-8 JSON text, or
    /// an `application/x-www-form-urlencoded` form (SMS, Zulip).
    pub body: String,
}

/// A broadcast: the intent, its derived status and each delivery.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Broadcast {
    pub id: String,
    pub title: String,
    pub body: String,
    pub severity: String,
    pub thread: Option<String>,
    pub resolved: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub fields: Vec<Field>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    /// The routes that picked the destinations, in match order (`default`
    /// for the default route); empty when the caller named them.
    #[serde(default)]
    pub routes: Vec<String>,
    pub created_at: String,
    /// `delivering`, `converged` or `partial`; derived from the deliveries.
    pub status: String,
    pub deliveries: Vec<Delivery>,
    /// The delivery objective, if the broadcast has one.
    #[serde(default)]
    pub objective: Option<ObjectiveView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub destination: String,
    pub state: String,
    /// The state as an operator reads it: "retrying 2/8".
    pub summary: String,
    pub attempts_made: u32,
    pub attempts_max: u32,
    pub idempotency_key: String,
    pub possible_duplicate: bool,
    pub next_attempt_at: Option<String>,
    /// Milliseconds from the server's now to the next attempt.
    pub next_attempt_in_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_http_status: Option<u16>,
    /// What the delivery created at the destination: a Slack `ts`, a Jira
    /// issue key, a Discord thread id, a PagerDuty dedup key.
    pub remote_ref: Option<String>,
    /// Where a person opens `remote_ref` (the Jira issue, the Matrix
    /// event), when herald can build it from the destination's settings.
    #[serde(default)]
    pub remote_url: Option<String>,
    pub attempts: Vec<Attempt>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    /// `send` or `verify`.
    pub kind: String,
    pub outcome: String,
    pub http_status: Option<u16>,
    pub started_at: String,
    pub finished_at: String,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub excerpt: Option<String>,
}

/// Every error, everywhere: `{"error": {"code", "message", "field"}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl Broadcast {
    pub fn from_view(view: &BroadcastView, now_ms: i64) -> Broadcast {
        let details = view.message.details();
        Broadcast {
            id: view.id.clone(),
            title: view.message.title().to_owned(),
            body: view.message.body().to_owned(),
            severity: view.message.severity().as_str().to_owned(),
            thread: view.message.thread().map(str::to_owned),
            resolved: view.message.resolved(),
            labels: details.labels.clone(),
            links: details.links.clone(),
            fields: details.fields.clone(),
            source: details.source.clone(),
            summary: details.summary.clone(),
            routes: view.routes.clone(),
            created_at: format_rfc3339_ms(view.created_at_ms),
            status: derive_status(view.deliveries.iter().map(|d| d.progress.state))
                .as_str()
                .to_owned(),
            deliveries: view
                .deliveries
                .iter()
                .map(|d| Delivery::from_view(d, now_ms))
                .collect(),
            objective: ObjectiveView::from_view(view, now_ms),
        }
    }

    pub fn is_final(&self) -> bool {
        self.status != "delivering"
    }
}

impl Delivery {
    fn from_view(view: &DeliveryView, now_ms: i64) -> Delivery {
        let p = &view.progress;
        Delivery {
            destination: view.destination.clone(),
            state: p.state.as_str().to_owned(),
            summary: p.summary(),
            attempts_made: p.attempts_made,
            attempts_max: p.attempts_max,
            idempotency_key: view.idempotency_key.clone(),
            possible_duplicate: p.possible_duplicate,
            next_attempt_at: p.due_at_ms.map(format_rfc3339_ms),
            next_attempt_in_ms: p.due_at_ms.map(|due| (due - now_ms).max(0)),
            last_error: view.last_error.clone(),
            last_http_status: view.last_http_status,
            remote_ref: view.remote_ref.clone(),
            remote_url: None,
            attempts: view
                .attempts
                .iter()
                .map(|a| Attempt {
                    number: a.number,
                    kind: a.kind.as_str().to_owned(),
                    outcome: a.outcome.clone(),
                    http_status: a.http_status,
                    started_at: format_rfc3339_ms(a.started_at_ms),
                    finished_at: format_rfc3339_ms(a.finished_at_ms),
                    latency_ms: a.finished_at_ms - a.started_at_ms,
                    error: a.error.clone(),
                    excerpt: a.excerpt.clone(),
                })
                .collect(),
        }
    }

    /// Failed or dead: the destination will not get the message unless an
    /// operator acts.
    pub fn is_lost_cause(&self) -> bool {
        matches!(
            DeliveryState::parse(&self.state),
            Some(DeliveryState::Failed | DeliveryState::Dead)
        )
    }

    /// "retrying 2/8 (HTTP 429: rate limited, retry in 2.0s)" for people
    /// watching. The reason is the error's text, which names the HTTP
    /// status where there was one; a bare status only when there is no
    /// text, and never a success status (Slack answers `internal_error`
    /// with HTTP 200).
    pub fn describe(&self) -> String {
        let mut text = self.summary.clone();
        let mut details = Vec::new();
        let state = DeliveryState::parse(&self.state);
        let show_error = matches!(
            state,
            Some(
                DeliveryState::Retrying
                    | DeliveryState::Verifying
                    | DeliveryState::Failed
                    | DeliveryState::Dead
            )
        );
        if show_error {
            match (&self.last_error, &self.last_http_status) {
                (Some(error), _) => details.push(truncate_chars(error, 140)),
                (None, Some(status)) if !(200..300).contains(status) => {
                    details.push(format!("HTTP {status}"))
                }
                _ => {}
            }
        }
        if state == Some(DeliveryState::Retrying) {
            if let Some(ms) = self.next_attempt_in_ms {
                details.push(describe_wait(ms));
            }
        }
        if self.possible_duplicate {
            details.push("possible duplicate".into());
        }
        if !details.is_empty() {
            text.push_str(&format!(" ({})", details.join(", ")));
        }
        text
    }
}

/// "retry now", "retry in 250ms", "retry in 2.5s", "retry in 3m10s".
fn describe_wait(ms: i64) -> String {
    match ms {
        ..=0 => "retry now".to_owned(),
        1..=999 => format!("retry in {ms}ms"),
        1_000..=59_999 => format!("retry in {:.1}s", ms as f64 / 1000.0),
        _ => format!("retry in {}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn truncate_chars(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `GET /v1/broadcasts`: newest first; pass `next_cursor` as `cursor` for
/// the next page.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BroadcastList {
    pub broadcasts: Vec<Broadcast>,
    pub next_cursor: Option<String>,
}

/// `GET /v1/broadcasts?view=summary`: the same page as `BroadcastList`,
/// each broadcast without its message body, details and attempts (a board
/// of a thousand broadcasts reads a few hundred bytes each).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BroadcastSummaryList {
    pub broadcasts: Vec<BroadcastSummary>,
    pub next_cursor: Option<String>,
}

/// A broadcast as a list of many shows it: what it is, its derived status,
/// and each delivery's current state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BroadcastSummary {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub thread: Option<String>,
    pub resolved: bool,
    pub created_at: String,
    /// `delivering`, `converged` or `partial`.
    pub status: String,
    pub deliveries: Vec<DeliverySummary>,
}

/// A delivery's current state without its attempts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliverySummary {
    pub destination: String,
    pub state: String,
    /// "retrying 2/8".
    pub summary: String,
    pub attempts_made: u32,
    pub attempts_max: u32,
    pub possible_duplicate: bool,
    pub next_attempt_at: Option<String>,
    /// Milliseconds from the server's now to the next attempt.
    pub next_attempt_in_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_http_status: Option<u16>,
    /// When the delivery last changed state (for a final one: when it
    /// became final).
    pub updated_at: String,
}

impl BroadcastSummary {
    pub fn from_view(view: &BroadcastView, now_ms: i64) -> BroadcastSummary {
        BroadcastSummary {
            id: view.id.clone(),
            title: view.message.title().to_owned(),
            severity: view.message.severity().as_str().to_owned(),
            thread: view.message.thread().map(str::to_owned),
            resolved: view.message.resolved(),
            created_at: format_rfc3339_ms(view.created_at_ms),
            status: derive_status(view.deliveries.iter().map(|d| d.progress.state))
                .as_str()
                .to_owned(),
            deliveries: view
                .deliveries
                .iter()
                .map(|d| {
                    let p = &d.progress;
                    DeliverySummary {
                        destination: d.destination.clone(),
                        state: p.state.as_str().to_owned(),
                        summary: p.summary(),
                        attempts_made: p.attempts_made,
                        attempts_max: p.attempts_max,
                        possible_duplicate: p.possible_duplicate,
                        next_attempt_at: p.due_at_ms.map(format_rfc3339_ms),
                        next_attempt_in_ms: p.due_at_ms.map(|due| (due - now_ms).max(0)),
                        last_error: d.last_error.clone(),
                        last_http_status: d.last_http_status,
                        updated_at: format_rfc3339_ms(d.updated_at_ms),
                    }
                })
                .collect(),
        }
    }
}

/// Body of `POST /v1/broadcasts/{id}/retry` and `/cancel` (optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Only these destinations of the broadcast; all when empty.
    #[serde(default)]
    pub destinations: Vec<String>,
}

/// The answer of `POST /v1/broadcasts/{id}/retry` and `/cancel`: the
/// broadcast after the action (its fields, as `Broadcast`), what the action
/// was and which destinations' deliveries it changed. `changed` is empty
/// when nothing applied (nothing failed to retry, nothing left to cancel).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActionResult {
    /// `retry` or `cancel`.
    pub action: String,
    pub changed: Vec<String>,
    #[serde(flatten)]
    pub broadcast: Broadcast,
}

/// One destination's health in `GET /v1/destinations`. No URL and no
/// credential: a webhook URL may itself be a secret.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DestinationHealth {
    pub name: String,
    pub kind: String,
    pub concurrency: u32,
    pub in_flight: usize,
    /// Set while the destination is paused after a 429.
    pub paused_until: Option<String>,
    pub consecutive_failures: u32,
    /// Circuit breaker: `closed`, `open` (no attempts until the cool-down
    /// ends), `half_open` (one probe).
    pub circuit: String,
    /// Requests per second at most, when limited.
    pub rate_limit_per_sec: Option<f64>,
    /// Unfinished deliveries.
    pub backlog: u64,
    /// When the oldest unfinished delivery's broadcast was accepted.
    pub oldest_waiting_since: Option<String>,
    pub last_error: Option<String>,
    /// When the last error happened (an old one stays visible, with its age).
    pub last_error_at: Option<String>,
    /// `active`, `paused` (by an operator), or `removed`: no longer in the
    /// config, its unfinished deliveries (`backlog`) held until it is back
    /// or they are cancelled.
    #[serde(default = "active")]
    pub status: String,
    /// An operator's pause, while it lasts.
    #[serde(default)]
    pub pause: Option<PauseView>,
}

fn active() -> String {
    "active".to_owned()
}

/// An operator's pause of a destination.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PauseView {
    /// When it ends by itself; none: until resumed.
    pub until: Option<String>,
    pub reason: String,
    /// The token that paused it.
    pub paused_by: String,
    pub paused_at: String,
}

/// Body of `POST /v1/destinations/{name}/pause`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// How long: `90s`, `15m`, `2h`, `1d`; none: until resumed.
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
    /// Why, for the other operators (required).
    pub reason: String,
}

/// Answer of `POST /v1/config/reload`: what changed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Destinations whose settings changed: new attempts use the new ones.
    pub changed: Vec<String>,
    /// Tokens configured now.
    pub tokens: usize,
    /// Settings that changed but take a restart.
    pub not_applied: Vec<String>,
}

/// A server-sent event `delivery`: one delivery's new state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub broadcast_id: String,
    pub destination: String,
    pub state: String,
    pub summary: String,
    pub attempts_made: u32,
    pub attempts_max: u32,
    pub next_attempt_in_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_http_status: Option<u16>,
    pub possible_duplicate: bool,
    pub at: String,
}

impl DeliveryEvent {
    /// The same delivery as `Delivery` (without attempts), for display.
    pub fn as_delivery(&self) -> Delivery {
        Delivery {
            destination: self.destination.clone(),
            state: self.state.clone(),
            summary: self.summary.clone(),
            attempts_made: self.attempts_made,
            attempts_max: self.attempts_max,
            idempotency_key: String::new(),
            possible_duplicate: self.possible_duplicate,
            next_attempt_at: None,
            next_attempt_in_ms: self.next_attempt_in_ms,
            last_error: self.last_error.clone(),
            last_http_status: self.last_http_status,
            remote_ref: None,
            remote_url: None,
            attempts: Vec::new(),
        }
    }
}

/// The server-sent event `status` that ends a broadcast's stream.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusEvent {
    pub broadcast_id: String,
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(state: &str, error: Option<&str>, status: Option<u16>) -> Delivery {
        DeliveryEvent {
            broadcast_id: String::new(),
            destination: "ops".into(),
            state: state.into(),
            summary: format!("{state} 2/8"),
            attempts_made: 2,
            attempts_max: 8,
            next_attempt_in_ms: Some(30),
            last_error: error.map(str::to_owned),
            last_http_status: status,
            possible_duplicate: false,
            at: String::new(),
        }
        .as_delivery()
    }

    #[test]
    fn live_lines_show_the_reason_not_a_success_status_nor_zero_seconds() {
        let slack = delivery(
            "verifying",
            Some("Slack answered internal_error"),
            Some(200),
        );
        assert_eq!(
            slack.describe(),
            "verifying 2/8 (Slack answered internal_error)"
        );
        let bare = delivery("retrying", None, Some(503));
        assert_eq!(bare.describe(), "retrying 2/8 (HTTP 503, retry in 30ms)");
        assert_eq!(describe_wait(0), "retry now");
        assert_eq!(describe_wait(2_500), "retry in 2.5s");
        assert_eq!(describe_wait(190_000), "retry in 3m10s");
    }
}
