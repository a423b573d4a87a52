//! `POST /v1/ingest/alertmanager`: Prometheus Alertmanager's webhook payload
//! (version 4) becomes a broadcast. The group key is the thread, so a
//! `resolved` notification lands after its `firing` one on every
//! destination. The receiver picks the destinations (`[alertmanager]`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::auth::authorize;
use super::broadcasts::{accept, targets, Intent};
use super::wire::Broadcast;
use super::{parse_json, ApiError, AppState};
use crate::clock::now_ms;
use crate::config::Scope;
use crate::domain::{
    check_url, Link, Message, MessageDetails, Severity, BODY_BYTES_MAX, LABELS_MAX,
    LABEL_VALUE_CHARS_MAX, LINKS_MAX, SOURCE_CHARS_MAX, SUMMARY_CHARS_MAX, THREAD_CHARS_MAX,
    TITLE_CHARS_MAX,
};
use crate::store::{IngestKey, Store};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub version: String,
    pub group_key: String,
    pub status: String,
    pub receiver: String,
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<Alert>,
    #[serde(default)]
    pub truncated_alerts: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub ends_at: String,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
}

fn cut(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_owned();
    }
    let mut end = bytes_max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The message a notification becomes.
pub fn message(n: &Notification) -> Result<Message, ApiError> {
    if n.version != "4" {
        return Err(ApiError::invalid(
            "version",
            format!(
                "version {:?} is not supported; Alertmanager sends \"4\"",
                n.version
            ),
        ));
    }
    let resolved = match n.status.as_str() {
        "firing" => false,
        "resolved" => true,
        other => {
            return Err(ApiError::invalid(
                "status",
                format!("{other:?} is neither firing nor resolved"),
            ))
        }
    };
    let name = n
        .common_labels
        .get("alertname")
        .or_else(|| n.group_labels.get("alertname"))
        .cloned()
        .unwrap_or_else(|| "alert".into());
    if n.alerts.is_empty() {
        return Err(ApiError::invalid(
            "alerts",
            "the notification has no alerts; Alertmanager always sends at least one",
        ));
    }
    // Alertmanager leaves out `truncatedAlerts` alerts (its `max_alerts`);
    // they still fire, so the title counts them.
    let firing = n.alerts.iter().filter(|a| a.status == "firing").count() as u64
        + if resolved { 0 } else { n.truncated_alerts };
    let head = if resolved {
        "[RESOLVED]".to_owned()
    } else {
        format!("[FIRING:{firing}]")
    };
    let summary = n
        .common_annotations
        .get("summary")
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    let title: String = format!("{head} {name}{summary}")
        .chars()
        .filter(|c| !c.is_control())
        .take(TITLE_CHARS_MAX)
        .collect();
    Ok(Message::new(
        &title,
        &body(n),
        severity_of(n),
        Some(&thread_of(&n.group_key)),
    )?
    .resolving(resolved)?
    .with_details(details(n))?)
}

/// The common annotation `description` at the head of the body at most.
const DESCRIPTION_BYTES_MAX: usize = 2 * 1024;

/// One line of at most `chars_max` characters, control characters left
/// out: Alertmanager never re-sends after a 4xx, so what does not fit is
/// cut, not refused.
fn line(text: &str, chars_max: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(chars_max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The group's common labels (those a label may be named, as many as
/// fit), the runbook and dashboard annotations and each alert's
/// generatorURL as links, the summary annotation as the summary, and
/// `alertmanager/<receiver>` as the source (routes can match on it).
pub fn details(n: &Notification) -> MessageDetails {
    let labels = n
        .common_labels
        .iter()
        .filter(|(name, _)| {
            MessageDetails {
                labels: [((*name).clone(), String::new())].into(),
                ..MessageDetails::default()
            }
            .validated()
            .is_ok()
        })
        .take(LABELS_MAX)
        .map(|(name, value)| (name.clone(), line(value, LABEL_VALUE_CHARS_MAX)))
        .collect();
    let mut links: Vec<Link> = Vec::new();
    let mut add_link = |text: String, url: &str| {
        if links.len() < LINKS_MAX
            && check_url("url", url).is_ok()
            && !links.iter().any(|l| l.url == url)
        {
            links.push(Link {
                text,
                url: url.to_owned(),
            });
        }
    };
    for (annotation, text) in [("runbook_url", "Runbook"), ("dashboard_url", "Dashboard")] {
        if let Some(url) = n.common_annotations.get(annotation) {
            add_link(text.to_owned(), url);
        }
    }
    for alert in &n.alerts {
        let what = alert
            .labels
            .get("instance")
            .or_else(|| alert.labels.get("alertname"))
            .map(|name| line(name, 60))
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "alert".into());
        add_link(format!("Source: {what}"), &alert.generator_url);
    }
    let summary = n
        .common_annotations
        .get("summary")
        .map(|s| line(s, SUMMARY_CHARS_MAX))
        .filter(|s| !s.is_empty());
    MessageDetails {
        labels,
        links,
        fields: Vec::new(),
        source: Some(line(
            &format!("alertmanager/{}", n.receiver),
            SOURCE_CHARS_MAX,
        )),
        summary,
    }
}

/// One alert's lines in the body at most (a long label set is cut).
const ALERT_ENTRY_BYTES_MAX: usize = 2 * 1024;
/// The Alertmanager link at the end of the body at most.
const EXTERNAL_URL_BYTES_MAX: usize = 1024;
/// Room kept at the end of the body for the note of alerts left out.
const NOTE_BYTES_MAX: usize = 160;

/// The alerts, firing ones first, as many as fit in a message body; then
/// a note of how many were left out (for length here, or by Alertmanager's
/// `max_alerts`) and the link to Alertmanager.
fn body(n: &Notification) -> String {
    let footer = if n.external_url.is_empty() {
        String::new()
    } else {
        cut(
            &format!("Alertmanager: {}", n.external_url),
            EXTERNAL_URL_BYTES_MAX,
        ) + "\n"
    };
    let mut body = match n.common_annotations.get("description") {
        Some(text) if !text.trim().is_empty() => {
            cut(&text.replace('\0', ""), DESCRIPTION_BYTES_MAX) + "\n\n"
        }
        _ => String::new(),
    };
    let budget = BODY_BYTES_MAX - footer.len() - NOTE_BYTES_MAX;
    let mut alerts: Vec<&Alert> = n.alerts.iter().collect();
    alerts.sort_by_key(|a| a.status != "firing");
    let mut shown = 0;
    for alert in alerts {
        let entry = alert_entry(alert);
        if body.len() + entry.len() > budget {
            break;
        }
        body.push_str(&entry);
        shown += 1;
    }
    let left_out = (n.alerts.len() - shown) as u64;
    if left_out > 0 || n.truncated_alerts > 0 {
        body.push_str(&format!(
            "(+{} more alerts not shown: {left_out} over herald's message size, {} truncated by Alertmanager)\n",
            left_out + n.truncated_alerts,
            n.truncated_alerts
        ));
    }
    body.push_str(&footer);
    body
}

fn alert_entry(alert: &Alert) -> String {
    let labels: Vec<String> = alert
        .labels
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let text = alert
        .annotations
        .get("summary")
        .or_else(|| alert.annotations.get("description"))
        .map(String::as_str)
        .unwrap_or("");
    let since = if alert.starts_at.is_empty() {
        String::new()
    } else {
        format!(" since {}", alert.starts_at)
    };
    let mut entry = format!(
        "- {}{since} {{{}}} {}",
        alert.status,
        labels.join(", "),
        text
    );
    if !alert.generator_url.is_empty() {
        entry.push_str(&format!("\n  source: {}", alert.generator_url));
    }
    cut(&entry, ALERT_ENTRY_BYTES_MAX) + "\n"
}

fn severity_of(n: &Notification) -> Severity {
    n.common_labels
        .get("severity")
        .and_then(|s| Severity::parse(s).ok())
        .unwrap_or(Severity::P3)
}

/// What makes two notifications the same: group, status, and each alert's
/// identity and times.
fn notification_fingerprint(n: &Notification) -> String {
    let mut hash = Sha256::new();
    for part in [n.group_key.as_str(), n.status.as_str(), n.receiver.as_str()] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for alert in &n.alerts {
        for part in [
            alert.fingerprint.as_str(),
            alert.status.as_str(),
            alert.starts_at.as_str(),
            alert.ends_at.as_str(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Group keys can be long; a long one becomes a stable hash.
fn thread_of(group_key: &str) -> String {
    if group_key.chars().count() <= THREAD_CHARS_MAX
        && !group_key.chars().any(char::is_control)
        && !group_key.trim().is_empty()
    {
        return group_key.to_owned();
    }
    let hash: String = Sha256::digest(group_key.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("alertmanager:{hash}")
}

pub(super) async fn ingest<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Broadcast>), ApiError> {
    let caller = authorize(&app.config.load(), &headers, Scope::Send)?;
    let Some(routes) = app.config.load().alertmanager.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "alertmanager_not_configured",
            "add an [alertmanager] table with destinations to the config to take Alertmanager notifications",
        ));
    };
    if matches!(&body, Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the notification is over alertmanager.request_body_bytes_max: raise it, \
             or set max_alerts in Alertmanager's webhook_config",
        ));
    }
    let notification: Notification = parse_json(body)?;
    let message = message(&notification)?;
    // The receiver's destinations and groups, else the default ones,
    // else the config's routes (on labels, severity and the source
    // `alertmanager/<receiver>`).
    let named = routes
        .receivers
        .get(&notification.receiver)
        .unwrap_or(&routes.destinations);
    let (destinations, matched_routes) = targets(&app, &message, named).map_err(|mut error| {
        if error
            .field
            .as_deref()
            .is_some_and(|f| f.starts_with("destinations"))
        {
            error.field = Some("receiver".into());
        }
        error
    })?;
    // Alertmanager re-sends a notification it thinks failed (a timeout
    // after herald committed, say): the same notification is the same
    // ingest key, so a re-send gets the first answer instead of a second page.
    let fingerprint = notification_fingerprint(&notification);
    let ingest = IngestKey {
        caller: caller.name,
        key: format!("alertmanager:{fingerprint}"),
        body_sha256: fingerprint,
        expires_before_ms: now_ms()
            .saturating_add(app.config.load().idempotency_retention_ms as i64),
    };
    if let Some(record) = app
        .store
        .ingest_record(&ingest.caller, &ingest.key, now_ms())
        .await?
    {
        let view = app
            .store
            .broadcast(&record.broadcast_id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the keyed broadcast is missing",
                )
            })?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(Broadcast::from_view(&view, now_ms())),
        ));
    }
    // The objective of the route the receiver maps to, when routes picked
    // the destinations.
    let objective = match matched_routes.is_empty() {
        true => None,
        false => app.config.load().routing.objective_for(&message),
    };
    let (broadcast, _) = accept(
        &app,
        Intent {
            message,
            destinations,
            routes: matched_routes,
            objective,
        },
        Some(ingest),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(broadcast)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRING: &str = r#"{
      "version": "4",
      "groupKey": "{}/{}:{alertname=\"DiskFull\"}",
      "truncatedAlerts": 0,
      "status": "firing",
      "receiver": "team-db",
      "groupLabels": {"alertname": "DiskFull"},
      "commonLabels": {"alertname": "DiskFull", "severity": "critical", "instance": "db-1"},
      "commonAnnotations": {"summary": "disk 95% full on db-1"},
      "externalURL": "http://alertmanager.example:9093",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "DiskFull", "severity": "critical", "instance": "db-1"},
        "annotations": {"summary": "disk 95% full on db-1"},
        "startsAt": "2026-11-27T23:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=disk",
        "fingerprint": "c2f3a0e1d4b5a6f7"
      }]
    }"#;

    #[test]
    fn a_firing_notification_becomes_a_p1_on_its_group_thread() {
        let n: Notification = serde_json::from_str(FIRING).unwrap();
        let m = message(&n).unwrap();
        assert_eq!(m.title(), "[FIRING:1] DiskFull: disk 95% full on db-1");
        assert_eq!(m.severity(), Severity::P1);
        assert_eq!(m.thread(), Some("{}/{}:{alertname=\"DiskFull\"}"));
        assert!(m.body().contains("instance=db-1"));
        let resolved: Notification = serde_json::from_str(
            &FIRING.replace("\"status\": \"firing\"", "\"status\": \"resolved\""),
        )
        .unwrap();
        assert!(message(&resolved)
            .unwrap()
            .title()
            .starts_with("[RESOLVED] DiskFull"));
        assert_eq!(
            thread_of(&"k".repeat(500)).len(),
            "alertmanager:".len() + 32
        );
    }

    /// A group of `count` alerts (every third resolved), as Alertmanager
    /// sends it.
    fn group(count: usize, truncated: u64) -> Notification {
        let mut n: Notification = serde_json::from_str(FIRING).unwrap();
        n.truncated_alerts = truncated;
        n.alerts = (0..count)
            .map(|i| Alert {
                status: if i % 3 == 2 { "resolved" } else { "firing" }.into(),
                labels: [("instance".to_owned(), format!("db-{i}"))].into(),
                annotations: [("summary".to_owned(), "disk ".repeat(40))].into(),
                starts_at: "2026-11-27T23:00:00Z".into(),
                ends_at: String::new(),
                fingerprint: format!("{i:016x}"),
                generator_url: "http://prometheus.example:9090/graph?g0.expr=disk".into(),
            })
            .collect();
        n
    }

    #[test]
    fn the_title_counts_the_alerts_alertmanager_truncated() {
        let m = message(&group(20, 30)).unwrap();
        // 14 of the 20 sent are firing, and 30 more were left out.
        assert!(
            m.title().starts_with("[FIRING:44] DiskFull"),
            "{}",
            m.title()
        );
        assert!(
            m.body().contains("(+30 more alerts not shown"),
            "{}",
            m.body()
        );
    }

    #[test]
    fn a_large_group_fits_the_body_with_a_note_of_what_was_left_out() {
        let m = message(&group(1_000, 0)).unwrap();
        assert!(m.body().len() <= BODY_BYTES_MAX);
        let shown = m.body().lines().filter(|l| l.starts_with("- ")).count();
        assert!(shown > 10 && shown < 1_000, "{shown}");
        assert!(
            m.body()
                .contains(&format!("(+{} more alerts not shown", 1_000 - shown)),
            "{}",
            m.body()
        );
        // Firing alerts come first: the ones cut are resolved ones.
        assert!(m
            .body()
            .lines()
            .take(shown)
            .all(|l| !l.starts_with("- resolved")));
        assert!(m
            .body()
            .ends_with("Alertmanager: http://alertmanager.example:9093\n"));
    }

    #[test]
    fn a_notification_without_alerts_is_refused_naming_the_field() {
        let error = message(&group(0, 0)).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("alerts"));
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
    }
}
