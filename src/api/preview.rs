//! Previews, without storing or sending anything:
//!
//! - `POST /v1/preview` takes the body of `POST /v1/broadcasts` and answers
//!   the routes it matches, the destinations it expands to (decided by the
//!   very code a send runs, `broadcasts::targets`) and, per destination,
//!   the request bodies its template renders. It needs the `send` scope: it
//!   is a dry run of a send, and it reveals the routing a sender would use.
//!   The message is rendered as a broadcast not yet accepted would be (a
//!   fresh id, now as its time).
//! - `GET /v1/broadcasts/{id}/preview` renders an accepted broadcast's
//!   deliveries as a first attempt sends them, byte for byte (the `read`
//!   scope). An update's thread reference is not known here: it renders as
//!   its thread's first message would.
//!
//! The bodies come from the connectors' own request builders, the same
//! functions a send calls, so a preview is what the destination receives.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;

use super::auth::authorize;
use super::broadcasts::{find, path_id, Intent};
use super::wire::{Preview, PreviewDestination, PreviewRequest, SendRequest};
use super::{parse_json_bytes, ApiError, AppState};
use crate::clock::now_ms;
use crate::config::{Config, Scope, Target};
use crate::connector::http::form_body;
use crate::domain::{
    delivery_idempotency_key, ClaimedDelivery, DeliveryProgress, Message, RetryPolicy,
};
use crate::kinds::{
    discord, email, google_chat, jira, matrix, pagerduty, slack, sms, teams, telegram, webhook,
    zulip,
};
use crate::store::Store;

pub(super) async fn preview<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Preview>, ApiError> {
    let config = app.config.load();
    authorize(&config, &headers, Scope::Send)?;
    let bytes = super::read_body(body)?;
    let request: SendRequest = parse_json_bytes(&bytes)?;
    // The same checks and routing as a send; `targets` runs inside.
    let intent = Intent::from_request(&app, &request)?;
    let now = now_ms();
    let broadcast_id = crate::domain::new_broadcast_id(now, &mut rand::rng());
    let destinations = intent
        .destinations
        .iter()
        .map(|name| {
            let delivery = delivery(&broadcast_id, name, &intent.message, now);
            destination_preview(&config, name, &delivery)
        })
        .collect();
    Ok(Json(Preview {
        routes: intent.routes,
        destinations,
    }))
}

pub(super) async fn broadcast_preview<S: Store>(
    State(app): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Preview>, ApiError> {
    let config = app.config.load();
    authorize(&config, &headers, Scope::Read)?;
    let id = path_id(id)?;
    let view = find(&*app, &id).await?;
    let destinations = view
        .deliveries
        .iter()
        .map(|d| {
            let mut delivery =
                delivery(&view.id, &d.destination, &view.message, view.created_at_ms);
            delivery.idempotency_key.clone_from(&d.idempotency_key);
            destination_preview(&config, &d.destination, &delivery)
        })
        .collect();
    Ok(Json(Preview {
        routes: view.routes,
        destinations,
    }))
}

/// The delivery of `message` to `destination`, as its first attempt holds
/// it.
fn delivery(
    broadcast_id: &str,
    destination: &str,
    message: &Message,
    at_ms: i64,
) -> ClaimedDelivery {
    ClaimedDelivery {
        delivery_id: 0,
        broadcast_id: broadcast_id.to_owned(),
        destination: destination.to_owned(),
        idempotency_key: delivery_idempotency_key(broadcast_id, destination),
        progress: DeliveryProgress::new(&RetryPolicy::default(), false, at_ms),
        message: message.clone(),
        broadcast_created_at_ms: at_ms,
        last_error: None,
        lease_epoch: 0,
        thread_ref: None,
        remote_ref: None,
    }
}

fn destination_preview(
    config: &Config,
    name: &str,
    delivery: &ClaimedDelivery,
) -> PreviewDestination {
    let target = config.destination(name).map(|d| &d.target);
    let mut preview = PreviewDestination {
        name: name.to_owned(),
        kind: target.map(|t| t.kind().to_owned()).unwrap_or_default(),
        requests: Vec::new(),
        error: None,
    };
    let Some(target) = target else {
        return preview;
    };
    match requests(target, delivery) {
        Ok(requests) => preview.requests = requests,
        Err(error) => preview.error = Some(error),
    }
    preview
}

/// The requests a first attempt of `delivery` sends to `target`, from the
/// kind's request builders.
fn requests(target: &Target, delivery: &ClaimedDelivery) -> Result<Vec<PreviewRequest>, String> {
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("JSON is UTF-8");
    let json =
        |value: &serde_json::Value| text(serde_json::to_vec(value).expect("JSON serialises"));
    let failed = |e: crate::template::TemplateError| format!("the destination's {e}");
    match target {
        Target::Webhook { rendering, .. } => {
            let body =
                webhook::connector::render_webhook_body(rendering, delivery).map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST webhook".into(),
                body: text(body),
            }])
        }
        Target::Slack {
            channel, rendering, ..
        } => {
            let body = slack::connector::render_post_message(rendering, delivery, channel, None)
                .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "chat.postMessage".into(),
                body: json(&body),
            }])
        }
        Target::Discord {
            forum, rendering, ..
        } => {
            let body = discord::connector::render_execute_body(rendering, delivery, *forum)
                .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST webhook?wait=true".into(),
                body: json(&body),
            }])
        }
        Target::DiscordBot { rendering, .. } => {
            let body = discord::bot_connector::render_create_message_body(rendering, delivery)
                .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST channels/{channel.id}/messages".into(),
                body: json(&body),
            }])
        }
        Target::Teams { rendering, .. } => {
            let body =
                teams::connector::render_card_message(rendering, delivery).map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST workflow".into(),
                body: json(&body),
            }])
        }
        Target::PagerDuty {
            routing_key,
            rendering,
            ..
        } => {
            let event =
                pagerduty::connector::render_event(rendering, delivery, routing_key.expose())
                    .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST /v2/enqueue".into(),
                body: json(&event),
            }])
        }
        Target::Jira {
            project,
            issue_type,
            rendering,
            ..
        } => {
            let body =
                jira::connector::render_create_body(rendering, delivery, project, issue_type)
                    .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST /rest/api/3/issue".into(),
                body: json(&body),
            }])
        }
        Target::GoogleChat { rendering, .. } => {
            let body = google_chat::connector::render_google_chat_message(rendering, delivery)
                .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST v1/{parent=spaces/*}/messages".into(),
                body: json(&body),
            }])
        }
        Target::Email {
            from,
            to,
            cc,
            rendering,
            ..
        } => Ok(vec![PreviewRequest {
            call: "SMTP DATA".into(),
            body: email::connector::preview_message(rendering, delivery, from, to, cc)?,
        }]),
        Target::Matrix { rendering, .. } => {
            let content =
                matrix::connector::render_matrix_message_content(rendering, delivery, None)
                    .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}".into(),
                body: json(&content),
            }])
        }
        Target::Sms {
            from,
            to,
            text_chars_max,
            rendering,
            ..
        } => {
            let text = sms::connector::render_sms_text(rendering, delivery, *text_chars_max)
                .map_err(failed)?;
            Ok(to
                .iter()
                .map(|to| PreviewRequest {
                    call: "POST /2010-04-01/Accounts/{AccountSid}/Messages.json".into(),
                    body: form_body(&sms::connector::twilio_create_form(from, to, &text)),
                })
                .collect())
        }
        Target::Telegram {
            chat_id,
            message_thread_id,
            rendering,
            ..
        } => {
            let body = telegram::connector::render_send_message_body(
                rendering,
                delivery,
                chat_id,
                *message_thread_id,
            )
            .map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST sendMessage".into(),
                body: json(&body),
            }])
        }
        Target::Zulip {
            stream, rendering, ..
        } => {
            let form =
                zulip::connector::render_send_form(rendering, delivery, stream).map_err(failed)?;
            Ok(vec![PreviewRequest {
                call: "POST /api/v1/messages".into(),
                body: form_body(&form),
            }])
        }
        #[allow(unreachable_patterns)]
        _ => Ok(Vec::new()),
    }
}
