//! Jira Cloud REST v3, basic auth with an account's email and API token.
//!
//! A thread's first message creates an issue (summary, description in the
//! Atlassian Document Format, and a label derived from the delivery's
//! idempotency key); its updates are comments on that issue; its resolve is
//! a comment and then the configured transition. Jira has no idempotency
//! key, so everything is read back before anything is re-sent:
//! - after an ambiguous create, the issue is searched by label with JQL;
//!   the search lags writes, so an empty answer is asked again after
//!   `search_recheck_ms` before the issue counts as absent;
//! - after an ambiguous comment, the issue's comments are read for the
//!   delivery's key (each comment ends with it);
//! - a resolve records its comment as the delivery's `remote_ref` before
//!   transitioning, so a retry does not comment twice, and a transition
//!   that is no longer offered because the issue is already done counts as
//!   done.

use std::sync::LazyLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{Secret, Target};
use crate::connector::http::{exchange, status_class, Reply};
use crate::connector::shared::{headline, parse_retry_after_ms, Role, VerifyReport};
use crate::domain::ClaimedDelivery;
use crate::domain::{Outcome, OutcomeClass};
use crate::template::{render_failed, Rendering, Template, TemplateError};

/// Jira refuses longer summaries.
const SUMMARY_CHARS_MAX: usize = 255;
/// Jira refuses longer labels.
const LABEL_CHARS_MAX: usize = 255;
/// Comments read back at most, newest first.
const COMMENTS_READ_MAX: usize = 100;

pub struct JiraConnector {
    client: reqwest::Client,
    api: reqwest::Url,
    project: String,
    issue_type: String,
    email: String,
    token: Secret,
    resolve_transition: String,
    search_recheck: Duration,
    rendering: Rendering,
}

/// The label that finds the issue a delivery created.
pub fn jira_label(idempotency_key: &str) -> String {
    format!("herald-{idempotency_key}")
}

/// The line every herald comment and description ends with, so a
/// read-back can find it.
fn key_line(delivery: &ClaimedDelivery) -> String {
    format!("herald delivery {}", delivery.idempotency_key)
}

/// An Atlassian Document Format document: one paragraph per line of text.
pub fn adf_document(lines: &[String]) -> Value {
    let content: Vec<Value> = lines
        .iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| json!({"type": "paragraph", "content": [{"type": "text", "text": line}]}))
        .collect();
    json!({"type": "doc", "version": 1, "content": content})
}

/// Jira's default template (`template.json.j2`), compiled once.
static DEFAULT_TEMPLATE: LazyLock<Template> =
    LazyLock::new(|| Template::builtin(include_str!("template.json.j2")));

/// Jira's default template.
pub fn default_template() -> &'static Template {
    &DEFAULT_TEMPLATE
}

/// What the destination's template gives for a delivery: the issue's
/// summary, description, labels and priority, and the comment.
struct Rendered {
    summary: String,
    description: Value,
    comment: Value,
    labels: Vec<String>,
    priority: Option<String>,
}

fn invalid(reason: &str) -> TemplateError {
    TemplateError {
        line: None,
        reason: reason.to_owned(),
    }
}

/// An ADF document with the delivery's key line as its last paragraph.
fn with_key_line(
    document: Option<&Value>,
    delivery: &ClaimedDelivery,
    what: &str,
) -> Result<Value, TemplateError> {
    let mut document = document.cloned().unwrap_or_else(|| adf_document(&[]));
    let Some(content) = document.get_mut("content").and_then(Value::as_array_mut) else {
        return Err(invalid(&format!(
            "{what} must be an Atlassian document: {{\"type\": \"doc\", \"version\": 1, \"content\": [...]}}"
        )));
    };
    content.push(
        json!({"type": "paragraph", "content": [{"type": "text", "text": key_line(delivery)}]}),
    );
    Ok(document)
}

fn render(rendering: &Rendering, delivery: &ClaimedDelivery) -> Result<Rendered, TemplateError> {
    let output = rendering.render(&DEFAULT_TEMPLATE, delivery)?;
    let text = |name: &str| output.get(name).and_then(Value::as_str).map(str::to_owned);
    let summary = text("summary").unwrap_or_else(|| headline(delivery));
    let labels = match output.get("labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(labels)) => labels
            .iter()
            .map(|l| {
                l.as_str()
                    .map(jira_label_text)
                    .ok_or_else(|| invalid("labels must be texts"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid("labels must be a list of texts")),
    };
    Ok(Rendered {
        summary,
        description: with_key_line(output.get("description"), delivery, "description")?,
        comment: with_key_line(output.get("comment"), delivery, "comment")?,
        labels,
        priority: text("priority"),
    })
}

/// A label as Jira takes it: no spaces, at most 255 characters.
fn jira_label_text(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .take(LABEL_CHARS_MAX)
        .collect()
}

/// `POST /rest/api/3/issue` for a thread's first message, with the default
/// template. See [`render_create_body`].
pub fn jira_create_body(delivery: &ClaimedDelivery, project: &str, issue_type: &str) -> Value {
    render_create_body(&Rendering::default(), delivery, project, issue_type)
        .expect("the default template renders every valid message")
}

/// `POST /rest/api/3/issue` for a thread's first message: the template's
/// summary, description, labels and priority; the project, the issue
/// type and the labels that find the issue again are the connector's.
pub fn render_create_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
    project: &str,
    issue_type: &str,
) -> Result<Value, TemplateError> {
    let rendered = render(rendering, delivery)?;
    let summary: String = rendered
        .summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SUMMARY_CHARS_MAX)
        .collect();
    let mut labels = vec!["herald".to_owned(), jira_label(&delivery.idempotency_key)];
    for label in rendered.labels {
        if !label.is_empty() && !labels.contains(&label) {
            labels.push(label);
        }
    }
    let mut body = json!({
        "fields": {
            "project": {"key": project},
            "issuetype": {"name": issue_type},
            "summary": summary,
            "description": rendered.description,
            "labels": labels,
        }
    });
    if let Some(priority) = rendered.priority {
        body["fields"]["priority"] = json!({"name": priority});
    }
    Ok(body)
}

/// `POST /rest/api/3/issue/{key}/comment` for an update or a resolve, with
/// the default template.
pub fn jira_comment_body(delivery: &ClaimedDelivery) -> Value {
    render_comment_body(&Rendering::default(), delivery)
        .expect("the default template renders every valid message")
}

/// `POST /rest/api/3/issue/{key}/comment`: the template's comment, ending
/// with the delivery's key line (the read-back looks for it).
pub fn render_comment_body(
    rendering: &Rendering,
    delivery: &ClaimedDelivery,
) -> Result<Value, TemplateError> {
    Ok(json!({"body": render(rendering, delivery)?.comment}))
}

/// Jira's outcome classes; errors carry Jira's own messages.
pub fn classify_jira_response(
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    now_ms: i64,
) -> Outcome {
    let class = match status {
        // An edit conflict: nothing was changed, try again.
        409 => OutcomeClass::Retryable,
        _ => status_class(status),
    };
    let mut outcome = Outcome::new(class);
    outcome.http_status = Some(status);
    if matches!(class, OutcomeClass::RateLimited | OutcomeClass::Retryable) {
        outcome.retry_after_ms = retry_after.and_then(|v| parse_retry_after_ms(v, now_ms));
    }
    if class == OutcomeClass::Success {
        outcome.remote_ref = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("key").and_then(Value::as_str).map(str::to_owned));
        return outcome;
    }
    let mut messages = Vec::new();
    if let Ok(answer) = serde_json::from_slice::<Value>(body) {
        if let Some(list) = answer.get("errorMessages").and_then(Value::as_array) {
            messages.extend(list.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        if let Some(map) = answer.get("errors").and_then(Value::as_object) {
            messages.extend(
                map.iter()
                    .map(|(field, why)| format!("{field}: {}", why.as_str().unwrap_or_default())),
            );
        }
    }
    let detail = if messages.is_empty() {
        String::new()
    } else {
        format!(": {}", messages.join("; "))
    };
    outcome.error = Some(match status {
        401 => format!("HTTP 401: Jira refused the email and API token{detail}"),
        403 => format!("HTTP 403: the account may not do this in the project{detail}"),
        404 => format!("HTTP 404: no such issue or project{detail}"),
        429 => "HTTP 429: Jira rate limited herald".to_owned(),
        _ => format!("HTTP {status} from Jira{detail}"),
    });
    outcome
}

#[derive(Deserialize)]
struct Transitions {
    #[serde(default)]
    transitions: Vec<TransitionOffer>,
}

#[derive(Deserialize)]
struct TransitionOffer {
    id: String,
    name: String,
}

/// The issue a thread reference names (`OPS-1`, or `OPS-1/comment/10001`).
fn issue_of(reference: &str) -> &str {
    reference.split('/').next().unwrap_or(reference)
}

impl JiraConnector {
    pub fn new(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> reqwest::Result<JiraConnector> {
        let Target::Jira {
            site_url,
            project,
            issue_type,
            email,
            token,
            resolve_transition,
            search_recheck_ms,
            rendering,
        } = target
        else {
            unreachable!("a Jira connector is built from a Jira target");
        };
        let mut api = site_url.clone();
        if !api.path().ends_with('/') {
            api.set_path(&format!("{}/", api.path()));
        }
        Ok(JiraConnector {
            client: crate::connector::http::client(timeout, connections_max)?,
            api: api.join("rest/api/3/").expect("a relative path joins"),
            project: project.clone(),
            issue_type: issue_type.clone(),
            email: email.clone(),
            token: token.clone(),
            resolve_transition: resolve_transition.clone(),
            search_recheck: Duration::from_millis(*search_recheck_ms),
            rendering: rendering.clone(),
        })
    }

    fn url(&self, path: &[&str]) -> reqwest::Url {
        let mut url = self.api.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(path);
        url
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Reply, Outcome> {
        exchange(
            request
                .basic_auth(&self.email, Some(self.token.expose()))
                .header("accept", "application/json"),
        )
        .await
    }

    fn classify(reply: &Reply, now_ms: i64) -> Outcome {
        let mut outcome = classify_jira_response(
            reply.status,
            reply.header("retry-after"),
            &reply.body,
            now_ms,
        );
        outcome.excerpt = reply.excerpt();
        outcome
    }

    pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
        let role = Role::of(delivery);
        // What an earlier attempt of this delivery already did (a resolve's
        // comment, or the issue a resolve with nothing to attach to made).
        if let Some(done) = delivery.remote_ref.as_deref() {
            return self.transition(issue_of(done), done, now_ms).await;
        }
        let mut outcome = match delivery.thread_ref.as_deref() {
            None => {
                let body = match render_create_body(
                    &self.rendering,
                    delivery,
                    &self.project,
                    &self.issue_type,
                ) {
                    Ok(body) => body,
                    Err(error) => return render_failed(&error),
                };
                match self
                    .call(self.client.post(self.url(&["issue"])).json(&body))
                    .await
                {
                    Ok(reply) => Self::classify(&reply, now_ms),
                    Err(outcome) => return outcome,
                }
            }
            Some(root) => {
                let issue = issue_of(root);
                let body = match render_comment_body(&self.rendering, delivery) {
                    Ok(body) => body,
                    Err(error) => return render_failed(&error),
                };
                let request = self
                    .client
                    .post(self.url(&["issue", issue, "comment"]))
                    .json(&body);
                let reply = match self.call(request).await {
                    Ok(reply) => reply,
                    Err(outcome) => return outcome,
                };
                let mut outcome = Self::classify(&reply, now_ms);
                // A comment is recorded as `ISSUE/comment/ID`.
                outcome.remote_ref = reply
                    .json::<Value>()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned))
                    .filter(|_| outcome.class == OutcomeClass::Success)
                    .map(|id| format!("{issue}/comment/{id}"));
                outcome
            }
        };
        if role != Role::Resolve || outcome.class != OutcomeClass::Success {
            return outcome;
        }
        let Some(done) = outcome.remote_ref.take() else {
            return outcome;
        };
        self.transition(issue_of(&done), &done, now_ms).await
    }

    /// Applies the resolve transition; `done` (the comment or issue already
    /// made) is kept as the delivery's reference whatever happens.
    async fn transition(&self, issue: &str, done: &str, now_ms: i64) -> Outcome {
        let mut outcome = self.transition_inner(issue, now_ms).await;
        outcome.remote_ref = Some(done.to_owned());
        outcome
    }

    async fn transition_inner(&self, issue: &str, now_ms: i64) -> Outcome {
        let offers = match self
            .call(self.client.get(self.url(&["issue", issue, "transitions"])))
            .await
        {
            Ok(reply) if reply.status == 200 => {
                reply.json::<Transitions>().unwrap_or(Transitions {
                    transitions: Vec::new(),
                })
            }
            Ok(reply) => return Self::classify(&reply, now_ms),
            Err(mut outcome) => {
                // Reading changes nothing: just try again.
                outcome.class = OutcomeClass::Retryable;
                return outcome;
            }
        };
        let wanted = &self.resolve_transition;
        let Some(offer) = offers
            .transitions
            .iter()
            .find(|t| t.id == *wanted || t.name.eq_ignore_ascii_case(wanted))
        else {
            return self.already_done(issue).await;
        };
        let body = json!({"transition": {"id": offer.id}});
        match self
            .call(
                self.client
                    .post(self.url(&["issue", issue, "transitions"]))
                    .json(&body),
            )
            .await
        {
            Ok(reply) => Self::classify(&reply, now_ms),
            // A repeated transition is caught by `already_done`.
            Err(outcome) => outcome,
        }
    }

    /// The transition is not offered: fine if the issue is already done.
    async fn already_done(&self, issue: &str) -> Outcome {
        match self.issue_status(issue).await {
            Ok((name, category)) if category == "done" => {
                let mut outcome = Outcome::new(OutcomeClass::Success);
                outcome.excerpt = Some(format!("{issue} is already {name}"));
                outcome
            }
            Ok((name, _)) => {
                let mut outcome = Outcome::new(OutcomeClass::Permanent);
                outcome.error = Some(format!(
                    "the transition {:?} is not offered for {issue} in status {name:?}; set resolve_transition",
                    self.resolve_transition
                ));
                outcome
            }
            Err(outcome) => outcome,
        }
    }

    /// The issue's status name and status category key (`done`, ...).
    async fn issue_status(&self, issue: &str) -> Result<(String, String), Outcome> {
        let reply = self
            .call(
                self.client
                    .get(self.url(&["issue", issue]))
                    .query(&[("fields", "status")]),
            )
            .await
            .map_err(|mut outcome| {
                outcome.class = OutcomeClass::Retryable;
                outcome
            })?;
        if reply.status != 200 {
            return Err(Self::classify(&reply, 0));
        }
        let issue: Value = reply.json().unwrap_or(Value::Null);
        let status = &issue["fields"]["status"];
        Ok((
            status["name"].as_str().unwrap_or_default().to_owned(),
            status["statusCategory"]["key"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    /// Issues carrying the label, as Jira's search sees them now.
    async fn search_label(&self, label: &str) -> Result<Option<String>, String> {
        let jql = format!("project = \"{}\" AND labels = \"{label}\"", self.project);
        let reply = self
            .call(self.client.get(self.url(&["search", "jql"])).query(&[
                ("jql", jql.as_str()),
                ("fields", "summary,labels"),
                ("maxResults", "10"),
            ]))
            .await
            .map_err(|o| o.error.unwrap_or_default())?;
        if reply.status != 200 {
            return Err(format!("search answered HTTP {}", reply.status));
        }
        let found: Value = reply.json().unwrap_or(Value::Null);
        Ok(found["issues"]
            .as_array()
            .and_then(|issues| issues.first())
            .and_then(|issue| issue["key"].as_str())
            .map(str::to_owned))
    }

    /// The comment of the issue that carries the delivery's key, if any.
    async fn find_comment(
        &self,
        issue: &str,
        delivery: &ClaimedDelivery,
    ) -> Result<Option<String>, String> {
        let max = COMMENTS_READ_MAX.to_string();
        let reply = self
            .call(
                self.client
                    .get(self.url(&["issue", issue, "comment"]))
                    .query(&[("orderBy", "-created"), ("maxResults", max.as_str())]),
            )
            .await
            .map_err(|o| o.error.unwrap_or_default())?;
        if reply.status != 200 {
            return Err(format!("reading comments answered HTTP {}", reply.status));
        }
        let page: Value = reply.json().unwrap_or(Value::Null);
        let line = key_line(delivery);
        Ok(page["comments"].as_array().and_then(|comments| {
            comments.iter().find_map(|c| {
                c["body"]
                    .to_string()
                    .contains(&line)
                    .then(|| c["id"].as_str().map(|id| format!("{issue}/comment/{id}")))
                    .flatten()
            })
        }))
    }

    pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
        let role = Role::of(delivery);
        let unknown = |error: String| {
            VerifyReport::unknown(format!("could not read Jira back: {error}"), true)
        };
        // What was maybe made: an issue (no thread reference yet) or a
        // comment on the thread's issue.
        let made = match (
            delivery.remote_ref.as_deref(),
            delivery.thread_ref.as_deref(),
        ) {
            (Some(done), _) => Some(done.to_owned()),
            (None, Some(root)) => match self.find_comment(issue_of(root), delivery).await {
                Ok(found) => found,
                Err(error) => return unknown(error),
            },
            (None, None) => {
                let label = jira_label(&delivery.idempotency_key);
                let mut found = self.search_label(&label).await;
                if matches!(found, Ok(None)) {
                    // The search is not read-after-write: ask again.
                    tokio::time::sleep(self.search_recheck).await;
                    found = self.search_label(&label).await;
                }
                match found {
                    Ok(found) => found,
                    Err(error) => return unknown(error),
                }
            }
        };
        let Some(made) = made else {
            return VerifyReport::absent("Jira does not have it (searched twice); sending again");
        };
        if role == Role::Resolve {
            // The comment (or issue) is there; the transition may not be.
            match self.issue_status(issue_of(&made)).await {
                Ok((_, category)) if category == "done" => {}
                Ok((name, _)) => {
                    return VerifyReport {
                        remote_ref: Some(made),
                        ..VerifyReport::absent(format!(
                            "the resolve's comment is there but the issue is still {name}; transitioning"
                        ))
                    }
                }
                Err(outcome) => return unknown(outcome.error.unwrap_or_default()),
            }
        }
        VerifyReport::found(made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jira_answers_map_to_outcome_classes() {
        let created = classify_jira_response(
            201,
            None,
            br#"{"id":"10000","key":"ED-24","self":"https://your-domain.atlassian.net/rest/api/3/issue/10000","transition":{"status":200,"errorCollection":{"errorMessages":[],"errors":{}}}}"#,
            0,
        );
        assert_eq!(created.class, OutcomeClass::Success);
        assert_eq!(created.remote_ref.as_deref(), Some("ED-24"));

        let invalid = classify_jira_response(
            400,
            None,
            br#"{"errorMessages":[],"errors":{"summary":"You must specify a summary of the issue."}}"#,
            0,
        );
        assert_eq!(invalid.class, OutcomeClass::Permanent);
        assert!(invalid
            .error
            .unwrap()
            .contains("summary: You must specify a summary"));

        let limited = classify_jira_response(429, Some("7"), b"", 0);
        assert_eq!(limited.class, OutcomeClass::RateLimited);
        assert_eq!(limited.retry_after_ms, Some(7_000));
        let auth = classify_jira_response(
            401,
            None,
            br#"{"errorMessages":["You are not authenticated."],"errors":{}}"#,
            0,
        );
        assert_eq!(auth.class, OutcomeClass::Permanent);
        assert_eq!(
            classify_jira_response(503, None, b"", 0).class,
            OutcomeClass::Retryable
        );
    }

    #[test]
    fn adf_has_one_paragraph_per_line_and_no_empty_text() {
        let doc = adf_document(&["a".into(), "".into(), "b".into()]);
        assert_eq!(doc["type"], "doc");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["content"].as_array().unwrap().len(), 2);
    }
}
