//! Teams workflow webhook (Power Automate "When a Teams webhook request is
//! received"), at `POST /teams/<anything>` (each path is one workflow).
//!
//! The body must be
//! `{"type":"message","attachments":[{"contentType":"application/vnd.microsoft.card.adaptive","content":<card>}]}`
//! where each card follows the Adaptive Card 1.5 schema as far as its
//! required properties go: `type` `AdaptiveCard`, a `version` string
//! (`1.5`), `body` elements each of a type the schema knows (`TextBlock`,
//! `Container`, `FactSet`, ...) with that type's required properties,
//! checked recursively through containers, columns, tables and
//! `Action.ShowCard` cards, and `actions` of known types. A valid post
//! answers 202 with an empty body; an invalid one 400 with a plain-text
//! reason. A workflow cannot be read back, so a re-send is a duplicate: the
//! stats count cards per path and per first `TextBlock` text.
//!
//! Faults: 429 answers `Retry-After` and the workflow service's
//! `{"error":{"code","message"}}`; a failure answers its status with the
//! same shape.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/teams/";

const CARD_CONTENT_TYPE: &str = "application/vnd.microsoft.card.adaptive";
/// Nesting deeper than this is refused (it bounds the recursion).
const CARD_DEPTH_MAX: usize = 32;

/// Element types of Adaptive Card 1.5 and their required properties
/// (`ImplementationsOf.Element` in the schema).
const ELEMENTS: [(&str, &[&str]); 16] = [
    ("ActionSet", &["actions"]),
    ("ColumnSet", &[]),
    ("Container", &["items"]),
    ("FactSet", &["facts"]),
    ("Image", &["url"]),
    ("ImageSet", &["images"]),
    ("Input.ChoiceSet", &[]),
    ("Input.Date", &[]),
    ("Input.Number", &[]),
    ("Input.Text", &[]),
    ("Input.Time", &[]),
    ("Input.Toggle", &["title"]),
    ("Media", &["sources"]),
    ("RichTextBlock", &["inlines"]),
    ("Table", &[]),
    ("TextBlock", &["text"]),
];

/// Action types (`ImplementationsOf.Action`) and their required properties.
const ACTIONS: [(&str, &[&str]); 5] = [
    ("Action.Execute", &[]),
    ("Action.OpenUrl", &["url"]),
    ("Action.ShowCard", &[]),
    ("Action.Submit", &[]),
    ("Action.ToggleVisibility", &["targetElements"]),
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TeamsStats {
    /// Per workflow path.
    pub paths: BTreeMap<String, TeamsPathStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TeamsPathStats {
    /// Valid posts received (each may carry several cards; almost always one).
    pub cards: u64,
    /// Per text of the first card's first `TextBlock`: posts carrying it.
    pub texts: BTreeMap<String, u64>,
    /// The texts above received more than once.
    pub duplicated_texts: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Teams {
    stats: TeamsStats,
}

fn service_error(status: StatusCode, code: &str, message: &str) -> Response {
    crate::mock::shared::json(status, json!({"error": {"code": code, "message": message}}))
}

fn check_required(object: &Value, kind: &str, required: &[&str], at: &str) -> Result<(), String> {
    for name in required {
        if object.get(name).is_none_or(Value::is_null) {
            return Err(format!("{at}: {kind} requires the property '{name}'"));
        }
    }
    Ok(())
}

fn check_elements(list: &Value, at: &str, depth: usize) -> Result<(), String> {
    let Some(elements) = list.as_array() else {
        return Err(format!("{at}: must be an array of elements"));
    };
    for (i, element) in elements.iter().enumerate() {
        check_element(element, &format!("{at}[{i}]"), depth + 1)?;
    }
    Ok(())
}

fn check_element(element: &Value, at: &str, depth: usize) -> Result<(), String> {
    if depth > CARD_DEPTH_MAX {
        return Err(format!("{at}: nested deeper than {CARD_DEPTH_MAX}"));
    }
    let Some(kind) = element["type"].as_str() else {
        return Err(format!("{at}: an element needs a 'type'"));
    };
    let Some((_, required)) = ELEMENTS.iter().find(|(k, _)| *k == kind) else {
        return Err(format!(
            "{at}: unknown element type '{kind}' (Adaptive Card 1.5 knows {})",
            ELEMENTS.map(|(k, _)| k).join(", ")
        ));
    };
    check_required(element, kind, required, at)?;
    match kind {
        "Container" => check_elements(&element["items"], &format!("{at}.items"), depth)?,
        "ActionSet" => check_actions(&element["actions"], &format!("{at}.actions"), depth)?,
        "FactSet" => {
            let facts = element["facts"]
                .as_array()
                .ok_or(format!("{at}.facts: must be an array"))?;
            for (i, fact) in facts.iter().enumerate() {
                check_required(
                    fact,
                    "Fact",
                    &["title", "value"],
                    &format!("{at}.facts[{i}]"),
                )?;
            }
        }
        "ImageSet" => {
            let images = element["images"]
                .as_array()
                .ok_or(format!("{at}.images: must be an array"))?;
            for (i, image) in images.iter().enumerate() {
                check_required(image, "Image", &["url"], &format!("{at}.images[{i}]"))?;
            }
        }
        "ColumnSet" => {
            if let Some(columns) = element["columns"].as_array() {
                for (i, column) in columns.iter().enumerate() {
                    if !column["items"].is_null() {
                        check_elements(
                            &column["items"],
                            &format!("{at}.columns[{i}].items"),
                            depth,
                        )?;
                    }
                }
            }
        }
        "Table" => {
            if let Some(rows) = element["rows"].as_array() {
                for (i, row) in rows.iter().enumerate() {
                    for (j, cell) in row["cells"].as_array().into_iter().flatten().enumerate() {
                        let cell_at = format!("{at}.rows[{i}].cells[{j}]");
                        check_required(cell, "TableCell", &["items"], &cell_at)?;
                        check_elements(&cell["items"], &format!("{cell_at}.items"), depth)?;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn check_actions(list: &Value, at: &str, depth: usize) -> Result<(), String> {
    let Some(actions) = list.as_array() else {
        return Err(format!("{at}: must be an array of actions"));
    };
    for (i, action) in actions.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let Some(kind) = action["type"].as_str() else {
            return Err(format!("{at}: an action needs a 'type'"));
        };
        let Some((_, required)) = ACTIONS.iter().find(|(k, _)| *k == kind) else {
            return Err(format!("{at}: unknown action type '{kind}'"));
        };
        check_required(action, kind, required, &at)?;
        if kind == "Action.ShowCard" && !action["card"].is_null() {
            check_card(&action["card"], &format!("{at}.card"), depth + 1, false)?;
        }
    }
    Ok(())
}

/// Checks a card; `top_level` cards need a version.
fn check_card(card: &Value, at: &str, depth: usize, top_level: bool) -> Result<(), String> {
    if card["type"] != "AdaptiveCard" {
        return Err(format!("{at}.type: must be 'AdaptiveCard'"));
    }
    match &card["version"] {
        Value::String(version)
            if version.split_once('.').is_some_and(|(major, minor)| {
                major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok()
            }) => {}
        Value::Null if !top_level => {}
        Value::Null => {
            return Err(format!(
                "{at}.version: a top-level card requires a version (\"1.5\")"
            ))
        }
        other => {
            return Err(format!(
                "{at}.version: {other} is not a version like \"1.5\""
            ))
        }
    }
    if !card["body"].is_null() {
        check_elements(&card["body"], &format!("{at}.body"), depth)?;
    }
    if !card["actions"].is_null() {
        check_actions(&card["actions"], &format!("{at}.actions"), depth)?;
    }
    Ok(())
}

/// Checks the workflow's message envelope and each card.
fn check_message(body: &[u8]) -> Result<Vec<Value>, String> {
    let message: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if message["type"] != "message" {
        return Err("type: must be 'message'".to_owned());
    }
    let attachments = message["attachments"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("attachments: must be a non-empty array")?;
    let mut cards = Vec::new();
    for (i, attachment) in attachments.iter().enumerate() {
        let at = format!("attachments[{i}]");
        if attachment["contentType"] != CARD_CONTENT_TYPE {
            return Err(format!("{at}.contentType: must be '{CARD_CONTENT_TYPE}'"));
        }
        check_card(&attachment["content"], &format!("{at}.content"), 0, true)?;
        cards.push(attachment["content"].clone());
    }
    Ok(cards)
}

/// The first `TextBlock` text of a card's body, looking into containers.
fn first_text(elements: &Value) -> Option<String> {
    elements
        .as_array()?
        .iter()
        .find_map(|e| match e["type"].as_str() {
            Some("TextBlock") => e["text"].as_str().map(str::to_owned),
            Some("Container") => first_text(&e["items"]),
            _ => None,
        })
}

impl Teams {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                let mut response = service_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "WorkflowRequestsThrottled",
                    "The workflow is receiving too many requests. Retry after the Retry-After interval.",
                );
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(retry_after_secs));
                return response;
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let reason = status.canonical_reason().unwrap_or("Error");
                return service_error(status, "ServiceError", reason);
            }
            _ => {}
        }
        if incoming.method != Method::POST {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "a workflow webhook takes POST",
            )
                .into_response();
        }
        let cards = match check_message(&incoming.body) {
            Ok(cards) => cards,
            Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
        };
        let stats = self.stats.paths.entry(incoming.path.clone()).or_default();
        stats.cards += 1;
        if let Some(text) = cards.first().and_then(|card| first_text(&card["body"])) {
            let count = stats.texts.entry(text.clone()).or_insert(0);
            *count += 1;
            if *count == 2 {
                stats.duplicated_texts.push(text);
            }
        }
        StatusCode::ACCEPTED.into_response()
    }

    pub(crate) fn stats(&self) -> TeamsStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::faults::Faults;
    use crate::mock::testing::{Answer, TestMock};

    const WORKFLOW: &str = "/teams/workflows/ops";

    fn card(body: Value) -> Value {
        json!({"type": "message", "attachments": [{
            "contentType": CARD_CONTENT_TYPE,
            "content": {"type": "AdaptiveCard", "version": "1.5", "body": body,
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json"},
        }]})
    }

    fn post(mock: &TestMock, message: &Value) -> Answer {
        mock.send(
            "POST",
            WORKFLOW,
            &[("content-type", "application/json")],
            &message.to_string(),
        )
    }

    #[test]
    fn cards_are_checked_against_the_schema() {
        let mock = TestMock::new();
        let valid = card(json!([
            {"type": "TextBlock", "text": "P1 INC-42", "weight": "Bolder"},
            {"type": "Container", "items": [{"type": "FactSet", "facts": [{"title": "Severity", "value": "P1"}]}]},
            {"type": "ColumnSet", "columns": [{"type": "Column", "items": [{"type": "TextBlock", "text": "x"}]}]},
            {"type": "ActionSet", "actions": [{"type": "Action.OpenUrl", "title": "Open", "url": "https://example.com"}]},
        ]));
        let accepted = post(&mock, &valid);
        assert_eq!(accepted.status, StatusCode::ACCEPTED);
        assert!(accepted.text.is_empty());

        let mut no_version = valid.clone();
        no_version["attachments"][0]["content"]
            .as_object_mut()
            .unwrap()
            .remove("version");
        let mut wrong_content_type = valid.clone();
        wrong_content_type["attachments"][0]["contentType"] = json!("application/json");
        let invalid = [
            (json!({"text": "plain"}), "type"),
            (json!({"type": "message", "attachments": []}), "attachments"),
            (wrong_content_type, "contentType"),
            (no_version, "version"),
            (
                card(json!([{"type": "Paragraph", "text": "x"}])),
                "unknown element type 'Paragraph'",
            ),
            (card(json!([{"type": "TextBlock"}])), "'text'"),
            (
                card(json!([{"type": "Container", "items": [{"type": "Image"}]}])),
                "body[0].items[0]",
            ),
            (
                card(json!([{"type": "FactSet", "facts": [{"title": "t"}]}])),
                "'value'",
            ),
            (
                card(json!([{"type": "ActionSet", "actions": [{"type": "Action.OpenUrl"}]}])),
                "'url'",
            ),
        ];
        for (message, expected) in invalid {
            let answer = post(&mock, &message);
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{message}");
            assert!(
                answer.text.contains(expected),
                "{expected}: {}",
                answer.text
            );
        }
        let garbage = mock.send("POST", WORKFLOW, &[], "nope");
        assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
        assert_eq!(mock.stats().teams.paths[WORKFLOW].cards, 1);
    }

    #[test]
    fn duplicates_show_in_the_stats() {
        let mock = TestMock::new();
        let message = card(json!([{"type": "TextBlock", "text": "P1 INC-42"}]));
        post(&mock, &message);
        post(&mock, &message);
        let stats = &mock.stats().teams.paths[WORKFLOW];
        assert_eq!(stats.cards, 2);
        assert_eq!(stats.texts["P1 INC-42"], 2);
        assert_eq!(stats.duplicated_texts, ["P1 INC-42"]);
    }

    #[test]
    fn faults_answer_in_the_workflow_services_shapes() {
        let mock = TestMock::new();
        mock.set_faults(
            "/teams/*",
            Faults {
                rate_limit_first: 1,
                fail_first: 1,
                drop_first: 1,
                ..Faults::default()
            },
        );
        let message = card(json!([{"type": "TextBlock", "text": "x"}]));
        let limited = post(&mock, &message);
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers["retry-after"], "1");
        assert!(limited.body["error"]["code"].is_string());
        assert_eq!(
            post(&mock, &message).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let dropped = post(&mock, &message);
        assert!(dropped.hang_ms.is_some());
        assert_eq!(mock.stats().teams.paths[WORKFLOW].cards, 1);
    }
}
