//! Jira Cloud REST v3, at `/jira/rest/api/3/...` (the base URL a connector
//! uses is `<mock>/jira`):
//!
//! - `POST issue`: create (201 `{"id","key","self"}`);
//! - `GET issue/{key or id}`: the issue with every field below;
//! - `POST issue/{key}/comment` (201 the comment), `GET issue/{key}/comment`;
//! - `GET issue/{key}/transitions`, `POST issue/{key}/transitions` (204);
//! - `GET search/jql?jql=..&fields=..&maxResults=..` and `POST search/jql`
//!   with `{"jql","fields","maxResults"}`;
//! - `GET myself`.
//!
//! Every request needs `Authorization: Basic base64(email:token)` (else 401).
//! Errors are Jira's `{"errorMessages": [...], "errors": {field: message}}`.
//!
//! Projects: every key of capitals, digits and `_` that starts with a
//! capital exists, except keys starting with `MISSING`. Issue types: `Task`,
//! `Bug`, `Story`, `Epic`, `Incident` (ids `10001`..`10005`). The workflow:
//! transitions `11` To Do, `21` In Progress, `31` Done, each available from
//! every status; new issues are To Do.
//!
//! JQL: clauses `labels = X`, `labels in (X, Y)`, `project = KEY`,
//! `key = KEY-1` (values quoted or not), joined by `AND`, with an optional
//! `ORDER BY` that is ignored (results are newest first). Search is not
//! read-after-write: an issue is visible to it only `search_lag_ms` (the
//! fault in force for the create request's path) after its creation.
//! Without `fields`, search returns summary, labels, status, project,
//! issuetype and created.
//!
//! Faults: 429 answers `Retry-After` and Jira's error JSON; a failure answers
//! its status with Jira's error JSON.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::mock::shared::{Admission, Fault, Incoming};

pub const PREFIX: &str = "/jira/";
const API: &str = "/jira/rest/api/3/";

const SUMMARY_CHARS_MAX: usize = 255;
const SEARCH_RESULTS_DEFAULT: usize = 50;
const SEARCH_RESULTS_MAX: usize = 5_000;
const FIRST_ISSUE_ID: u64 = 10_001;
const FIRST_COMMENT_ID: u64 = 10_000;

const ISSUE_TYPES: [(&str, &str); 5] = [
    ("10001", "Task"),
    ("10002", "Bug"),
    ("10003", "Story"),
    ("10004", "Epic"),
    ("10005", "Incident"),
];

/// The workflow: (transition id, status id, name, category id, category key).
const WORKFLOW: [(&str, &str, &str, u32, &str); 3] = [
    ("11", "10000", "To Do", 2, "new"),
    ("21", "3", "In Progress", 4, "indeterminate"),
    ("31", "10001", "Done", 3, "done"),
];

/// Fields a create may set; others are refused as Jira refuses fields that
/// are not on the create screen. `customfield_*` are accepted too.
const CREATE_FIELDS: [&str; 12] = [
    "project",
    "issuetype",
    "summary",
    "description",
    "labels",
    "priority",
    "assignee",
    "reporter",
    "components",
    "duedate",
    "environment",
    "parent",
];

const DEFAULT_SEARCH_FIELDS: [&str; 6] = [
    "summary",
    "labels",
    "status",
    "project",
    "issuetype",
    "created",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JiraStats {
    pub projects: BTreeMap<String, JiraProjectStats>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JiraProjectStats {
    /// Issues created.
    pub issues: u64,
    /// Per issue key: comments added.
    pub comments: BTreeMap<String, u64>,
    /// Per issue key: the transition ids applied, in order.
    pub transitions: BTreeMap<String, Vec<String>>,
    /// Per issue key: its status name now.
    pub statuses: BTreeMap<String, String>,
    /// Per label: how many issues carry it.
    pub labels: BTreeMap<String, u64>,
    /// The labels above carried by more than one issue.
    pub duplicated_labels: Vec<String>,
}

struct Comment {
    id: u64,
    body: Value,
    created_ms: i64,
}

struct Issue {
    id: u64,
    key: String,
    project: String,
    issue_type: (&'static str, &'static str),
    summary: String,
    description: Option<Value>,
    labels: Vec<String>,
    /// Index into [`WORKFLOW`].
    status: usize,
    created_ms: i64,
    /// When search starts to see it.
    visible_at_ms: i64,
    comments: Vec<Comment>,
    transitions: Vec<String>,
}

#[derive(Default)]
pub(crate) struct Jira {
    issues: Vec<Issue>,
    /// The last issue number per project.
    numbers: HashMap<String, u64>,
    comments: u64,
}

/// A Jira error answer.
struct JiraError {
    status: StatusCode,
    messages: Vec<String>,
    errors: Map<String, Value>,
}

impl JiraError {
    fn message(status: StatusCode, message: &str) -> JiraError {
        JiraError {
            status,
            messages: vec![message.to_owned()],
            errors: Map::new(),
        }
    }

    fn fields(errors: Map<String, Value>) -> JiraError {
        JiraError {
            status: StatusCode::BAD_REQUEST,
            messages: Vec::new(),
            errors,
        }
    }

    fn issue_not_found() -> JiraError {
        JiraError::message(
            StatusCode::NOT_FOUND,
            "Issue does not exist or you do not have permission to see it.",
        )
    }

    fn into_response(self) -> Response {
        crate::mock::shared::json(
            self.status,
            json!({"errorMessages": self.messages, "errors": self.errors}),
        )
    }
}

type JiraResult = Result<Response, JiraError>;

fn jira_time(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = crate::mock::shared::civil_utc(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}+0000")
}

fn project_exists(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && !key.starts_with("MISSING")
}

/// An Atlassian Document: `{"type":"doc","version":1,"content":[nodes]}`.
fn is_adf_doc(value: &Value) -> bool {
    value["type"] == "doc"
        && value["version"] == 1
        && value["content"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().all(|n| n["type"].is_string()))
}

const ADF_ERROR: &str =
    "Operation value must be an Atlassian Document (see the Atlassian Document Format)";

fn body_json(incoming: &Incoming) -> Result<Value, JiraError> {
    serde_json::from_slice(&incoming.body).map_err(|e| {
        JiraError::message(
            StatusCode::BAD_REQUEST,
            &format!("The request body is not valid JSON: {e}"),
        )
    })
}

fn authenticated(incoming: &Incoming) -> bool {
    incoming
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .is_some_and(|pair| {
            pair.split_once(':')
                .is_some_and(|(email, token)| !email.is_empty() && !token.is_empty())
        })
}

impl Jira {
    pub(crate) fn handle(&mut self, incoming: &Incoming, admission: &Admission) -> Response {
        match &admission.fault {
            Fault::RateLimit { retry_after_secs } => {
                let mut response =
                    JiraError::message(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded.")
                        .into_response();
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(*retry_after_secs));
                return response;
            }
            Fault::Fail { status } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY);
                let reason = status.canonical_reason().unwrap_or("Error");
                return JiraError::message(status, reason).into_response();
            }
            _ => {}
        }
        if !authenticated(incoming) {
            return JiraError::message(
                StatusCode::UNAUTHORIZED,
                "Client must be authenticated to access this resource.",
            )
            .into_response();
        }
        let lag_ms = i64::try_from(admission.faults.search_lag_ms).unwrap_or(i64::MAX);
        self.route(incoming, lag_ms)
            .unwrap_or_else(JiraError::into_response)
    }

    fn route(&mut self, incoming: &Incoming, search_lag_ms: i64) -> JiraResult {
        let rest = incoming.path.strip_prefix(API).unwrap_or("");
        let segments: Vec<&str> = rest.split('/').collect();
        let method = &incoming.method;
        match (method.clone(), segments.as_slice()) {
            (Method::POST, ["issue"]) => self.create(incoming, search_lag_ms),
            (Method::GET, ["issue", key]) => {
                let issue = self.find(key)?;
                Ok(crate::mock::shared::json(
                    StatusCode::OK,
                    render_issue(issue, &incoming.base_url(), None),
                ))
            }
            (Method::POST, ["issue", key, "comment"]) => self.comment(incoming, key),
            (Method::GET, ["issue", key, "comment"]) => {
                let issue = self.find(key)?;
                let base = incoming.base_url();
                Ok(crate::mock::shared::json(
                    StatusCode::OK,
                    render_comments(issue, &base),
                ))
            }
            (Method::GET, ["issue", key, "transitions"]) => {
                self.find(key)?;
                let base = incoming.base_url();
                let transitions: Vec<Value> = (0..WORKFLOW.len())
                    .map(|i| render_transition(i, &base))
                    .collect();
                Ok(crate::mock::shared::json(
                    StatusCode::OK,
                    json!({"expand": "transitions", "transitions": transitions}),
                ))
            }
            (Method::POST, ["issue", key, "transitions"]) => self.transition(incoming, key),
            (Method::GET | Method::POST, ["search", "jql"]) => self.search(incoming),
            (Method::GET, ["myself"]) => Ok(crate::mock::shared::json(
                StatusCode::OK,
                json!({
                    "accountId": "5b10ac8d82e05b22cc7d4ef5",
                    "accountType": "atlassian",
                    "displayName": "herald",
                    "active": true,
                }),
            )),
            _ => Err(JiraError::message(
                StatusCode::NOT_FOUND,
                &format!("null for uri: {}", incoming.path),
            )),
        }
    }

    fn find(&self, key_or_id: &str) -> Result<&Issue, JiraError> {
        self.issues
            .iter()
            .find(|i| i.key == key_or_id || i.id.to_string() == key_or_id)
            .ok_or_else(JiraError::issue_not_found)
    }

    fn find_mut(&mut self, key_or_id: &str) -> Result<&mut Issue, JiraError> {
        self.issues
            .iter_mut()
            .find(|i| i.key == key_or_id || i.id.to_string() == key_or_id)
            .ok_or_else(JiraError::issue_not_found)
    }

    fn create(&mut self, incoming: &Incoming, search_lag_ms: i64) -> JiraResult {
        let body = body_json(incoming)?;
        let empty = Map::new();
        let fields = body["fields"].as_object().unwrap_or(&empty);
        let mut errors = Map::new();
        let mut error = |field: &str, message: String| {
            errors.insert(field.to_owned(), Value::String(message));
        };
        for name in fields.keys() {
            if !CREATE_FIELDS.contains(&name.as_str()) && !name.starts_with("customfield_") {
                error(
                    name,
                    format!("Field '{name}' cannot be set. It is not on the appropriate screen, or unknown."),
                );
            }
        }
        let project = fields
            .get("project")
            .and_then(|p| p["key"].as_str())
            .filter(|key| project_exists(key));
        if project.is_none() {
            error("project", "Specify a valid project ID or key".to_owned());
        }
        let issue_type = match fields.get("issuetype") {
            None | Some(Value::Null) => {
                error("issuetype", "Specify an issue type".to_owned());
                None
            }
            Some(given) => {
                let found = ISSUE_TYPES.iter().copied().find(|(id, name)| {
                    given["id"].as_str() == Some(id)
                        || given["name"]
                            .as_str()
                            .is_some_and(|n| n.eq_ignore_ascii_case(name))
                });
                if found.is_none() {
                    error(
                        "issuetype",
                        "The issue type selected is invalid.".to_owned(),
                    );
                }
                found
            }
        };
        let summary = fields
            .get("summary")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        match summary {
            None => error(
                "summary",
                "You must specify a summary of the issue.".to_owned(),
            ),
            Some(s) if s.contains('\n') || s.contains('\r') => error(
                "summary",
                "The summary is invalid because it contains newline characters.".to_owned(),
            ),
            Some(s) if s.chars().count() > SUMMARY_CHARS_MAX => error(
                "summary",
                "Summary must be less than 255 characters.".to_owned(),
            ),
            Some(_) => {}
        }
        let description = fields.get("description").filter(|d| !d.is_null());
        if description.is_some_and(|d| !is_adf_doc(d)) {
            error("description", ADF_ERROR.to_owned());
        }
        let labels: Vec<String> = match fields.get("labels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(labels)) => {
                let labels: Vec<String> = labels
                    .iter()
                    .map(|l| l.as_str().unwrap_or_default().to_owned())
                    .collect();
                if let Some(bad) = labels.iter().find(|l| l.is_empty() || l.contains(' ')) {
                    error(
                        "labels",
                        format!("The label '{bad}' contains spaces which is invalid."),
                    );
                }
                labels
            }
            Some(_) => {
                error("labels", "data was not an array".to_owned());
                Vec::new()
            }
        };
        let (Some(project), Some(issue_type), Some(summary), true) =
            (project, issue_type, summary, errors.is_empty())
        else {
            return Err(JiraError::fields(errors));
        };
        let number = self.numbers.entry(project.to_owned()).or_insert(0);
        *number += 1;
        let issue = Issue {
            id: FIRST_ISSUE_ID + self.issues.len() as u64,
            key: format!("{project}-{number}"),
            project: project.to_owned(),
            issue_type,
            summary: summary.to_owned(),
            description: description.cloned(),
            labels,
            status: 0,
            created_ms: incoming.now_ms,
            visible_at_ms: incoming.now_ms.saturating_add(search_lag_ms),
            comments: Vec::new(),
            transitions: Vec::new(),
        };
        let answer = json!({
            "id": issue.id.to_string(),
            "key": issue.key,
            "self": issue_url(&incoming.base_url(), issue.id),
        });
        self.issues.push(issue);
        Ok(crate::mock::shared::json(StatusCode::CREATED, answer))
    }

    fn comment(&mut self, incoming: &Incoming, key: &str) -> JiraResult {
        self.find(key)?;
        let body = body_json(incoming)?;
        if body["body"].is_null() {
            let mut errors = Map::new();
            errors.insert("comment".into(), json!("Comment body can not be empty!"));
            return Err(JiraError::fields(errors));
        }
        if !is_adf_doc(&body["body"]) {
            let mut errors = Map::new();
            errors.insert("comment".into(), json!(ADF_ERROR));
            return Err(JiraError::fields(errors));
        }
        let id = FIRST_COMMENT_ID + self.comments;
        self.comments += 1;
        let issue = self.find_mut(key)?;
        issue.comments.push(Comment {
            id,
            body: body["body"].clone(),
            created_ms: incoming.now_ms,
        });
        let comment = issue.comments.last().expect("pushed");
        Ok(crate::mock::shared::json(
            StatusCode::CREATED,
            render_comment(issue.id, comment, &incoming.base_url()),
        ))
    }

    fn transition(&mut self, incoming: &Incoming, key: &str) -> JiraResult {
        self.find(key)?;
        let body = body_json(incoming)?;
        let Some(id) = body["transition"]["id"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| body["transition"]["id"].as_u64().map(|n| n.to_string()))
        else {
            return Err(JiraError::message(
                StatusCode::BAD_REQUEST,
                "Missing 'transition' identifier",
            ));
        };
        let Some(status) = WORKFLOW.iter().position(|t| t.0 == id) else {
            return Err(JiraError::message(
                StatusCode::BAD_REQUEST,
                &format!("Transition id '{id}' is not valid for this issue."),
            ));
        };
        let issue = self.find_mut(key)?;
        issue.status = status;
        issue.transitions.push(id);
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn search(&self, incoming: &Incoming) -> JiraResult {
        let (jql, fields, max_results) = if incoming.method == Method::POST {
            let body = body_json(incoming)?;
            let fields: Option<Vec<String>> = body["fields"].as_array().map(|f| {
                f.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            });
            (
                body["jql"].as_str().unwrap_or("").to_owned(),
                fields,
                body["maxResults"].as_u64().map(|n| n as usize),
            )
        } else {
            let param = |name: &str| incoming.query_param(name);
            (
                param("jql").unwrap_or_default(),
                param("fields").map(|f| f.split(',').map(|s| s.trim().to_owned()).collect()),
                param("maxResults").and_then(|m| m.parse().ok()),
            )
        };
        let clauses = parse_jql(&jql)
            .map_err(|reason| JiraError::message(StatusCode::BAD_REQUEST, &reason))?;
        let max_results = max_results
            .unwrap_or(SEARCH_RESULTS_DEFAULT)
            .clamp(1, SEARCH_RESULTS_MAX);
        let fields = fields.unwrap_or_else(|| {
            DEFAULT_SEARCH_FIELDS
                .iter()
                .map(|f| (*f).to_owned())
                .collect()
        });
        let offset: usize = incoming
            .query_param("nextPageToken")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let matching: Vec<&Issue> = self
            .issues
            .iter()
            .rev()
            .filter(|i| i.visible_at_ms <= incoming.now_ms)
            .filter(|i| clauses.iter().all(|c| c.matches(i)))
            .collect();
        let base = incoming.base_url();
        let page: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(max_results)
            .map(|i| render_issue(i, &base, Some(&fields)))
            .collect();
        let is_last = offset + max_results >= matching.len();
        let mut answer = json!({"issues": page, "isLast": is_last});
        if !is_last {
            answer["nextPageToken"] = json!((offset + max_results).to_string());
        }
        Ok(crate::mock::shared::json(StatusCode::OK, answer))
    }

    pub(crate) fn stats(&self) -> JiraStats {
        let mut projects: BTreeMap<String, JiraProjectStats> = BTreeMap::new();
        for issue in &self.issues {
            let stats = projects.entry(issue.project.clone()).or_default();
            stats.issues += 1;
            stats
                .comments
                .insert(issue.key.clone(), issue.comments.len() as u64);
            stats
                .transitions
                .insert(issue.key.clone(), issue.transitions.clone());
            stats
                .statuses
                .insert(issue.key.clone(), WORKFLOW[issue.status].2.to_owned());
            for label in &issue.labels {
                *stats.labels.entry(label.clone()).or_insert(0) += 1;
            }
        }
        for stats in projects.values_mut() {
            stats.duplicated_labels = stats
                .labels
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(l, _)| l.clone())
                .collect();
        }
        JiraStats { projects }
    }
}

/// One JQL clause: a field and the values it may equal.
#[derive(Debug, PartialEq)]
enum Clause {
    Labels(Vec<String>),
    Project(String),
    Key(String),
}

impl Clause {
    fn matches(&self, issue: &Issue) -> bool {
        match self {
            Clause::Labels(any) => issue.labels.iter().any(|l| any.contains(l)),
            Clause::Project(key) => issue.project.eq_ignore_ascii_case(key),
            Clause::Key(key) => issue.key.eq_ignore_ascii_case(key),
        }
    }
}

/// Splits JQL into words, quoted strings and `=`, `(`, `)`, `,`.
fn jql_tokens(jql: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = jql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if matches!(c, '=' | '(' | ')' | ',') {
            tokens.push(c.to_string());
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut value = String::from("\u{0}");
            loop {
                match chars.next() {
                    Some(ch) if ch == c => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(ch) => value.push(ch),
                    None => return Err("Error in the JQL Query: unterminated string".into()),
                }
            }
            tokens.push(value);
        } else {
            let mut word = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || matches!(ch, '=' | '(' | ')' | ',' | '"' | '\'') {
                    break;
                }
                word.push(ch);
                chars.next();
            }
            tokens.push(word);
        }
    }
    Ok(tokens)
}

/// Parses the JQL subset described in the module docs. Quoted values are
/// marked with a leading NUL by the tokenizer so `"AND"` stays a value.
fn parse_jql(jql: &str) -> Result<Vec<Clause>, String> {
    let mut tokens = jql_tokens(jql)?;
    if let Some(order) = tokens.iter().position(|t| t.eq_ignore_ascii_case("order")) {
        tokens.truncate(order);
    }
    if tokens.is_empty() {
        return Err("Unbounded JQL queries are not allowed here. Please add a search restriction to your query.".into());
    }
    let value = |t: &String| t.strip_prefix('\u{0}').unwrap_or(t).to_owned();
    let mut clauses = Vec::new();
    let mut at = 0;
    loop {
        let field = tokens.get(at).map(|t| t.to_ascii_lowercase());
        let operator = tokens.get(at + 1).map(|t| t.to_ascii_lowercase());
        let values = match operator.as_deref() {
            Some("=") => {
                let v = tokens
                    .get(at + 2)
                    .ok_or("Error in the JQL Query: Expecting a value")?;
                at += 3;
                vec![value(v)]
            }
            Some("in") => {
                if tokens.get(at + 2).map(String::as_str) != Some("(") {
                    return Err("Error in the JQL Query: Expecting '(' after 'in'".into());
                }
                at += 3;
                let mut values = Vec::new();
                loop {
                    let v = tokens
                        .get(at)
                        .ok_or("Error in the JQL Query: Expecting ')'")?;
                    values.push(value(v));
                    at += 1;
                    match tokens.get(at).map(String::as_str) {
                        Some(",") => at += 1,
                        Some(")") => {
                            at += 1;
                            break;
                        }
                        _ => return Err("Error in the JQL Query: Expecting ',' or ')'".into()),
                    }
                }
                values
            }
            _ => {
                return Err(format!(
                    "Error in the JQL Query: this mock understands `field = value` and `field in (values)` joined by AND, not {:?}",
                    tokens[at..].join(" ")
                ))
            }
        };
        let single = || values.first().cloned().unwrap_or_default();
        clauses.push(match field.as_deref() {
            Some("labels") => Clause::Labels(values.clone()),
            Some("project") => Clause::Project(single()),
            Some("key" | "issuekey") => Clause::Key(single()),
            Some(other) => {
                return Err(format!(
                    "Field '{other}' does not exist or you do not have permission to view it."
                ))
            }
            None => unreachable!("an operator was read after it"),
        });
        match tokens.get(at) {
            None => return Ok(clauses),
            Some(and) if and.eq_ignore_ascii_case("and") => at += 1,
            Some(other) => {
                return Err(format!(
                    "Error in the JQL Query: Expecting 'AND' but got '{}'",
                    value(other)
                ))
            }
        }
    }
}

fn issue_url(base: &str, id: u64) -> String {
    format!("{base}{API}issue/{id}")
}

fn render_status(index: usize, base: &str) -> Value {
    let (_, id, name, category_id, category_key) = WORKFLOW[index];
    json!({
        "self": format!("{base}{API}status/{id}"),
        "id": id,
        "name": name,
        "statusCategory": {"id": category_id, "key": category_key, "name": name},
    })
}

fn render_transition(index: usize, base: &str) -> Value {
    let (id, _, name, _, _) = WORKFLOW[index];
    json!({
        "id": id,
        "name": name,
        "to": render_status(index, base),
        "hasScreen": false,
        "isGlobal": true,
        "isInitial": false,
        "isAvailable": true,
        "isConditional": false,
        "isLooped": false,
    })
}

fn render_comment(issue_id: u64, comment: &Comment, base: &str) -> Value {
    json!({
        "id": comment.id.to_string(),
        "self": format!("{}/comment/{}", issue_url(base, issue_id), comment.id),
        "author": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "herald"},
        "body": comment.body,
        "created": jira_time(comment.created_ms),
        "updated": jira_time(comment.created_ms),
        "jsdPublic": true,
    })
}

fn render_comments(issue: &Issue, base: &str) -> Value {
    let comments: Vec<Value> = issue
        .comments
        .iter()
        .map(|c| render_comment(issue.id, c, base))
        .collect();
    json!({
        "comments": comments,
        "startAt": 0,
        "maxResults": comments.len(),
        "total": comments.len(),
    })
}

/// The issue with the given fields (`*all`/`*navigable` or none: all).
fn render_issue(issue: &Issue, base: &str, fields: Option<&[String]>) -> Value {
    let all = fields.is_none_or(|f| f.iter().any(|n| n == "*all" || n == "*navigable"));
    let wanted = |name: &str| all || fields.is_some_and(|f| f.iter().any(|n| n == name));
    let mut out = Map::new();
    let mut put = |name: &str, value: Value| {
        if wanted(name) {
            out.insert(name.to_owned(), value);
        }
    };
    put("summary", json!(issue.summary));
    put("labels", json!(issue.labels));
    put("status", render_status(issue.status, base));
    put(
        "project",
        json!({"key": issue.project, "name": issue.project}),
    );
    put(
        "issuetype",
        json!({"id": issue.issue_type.0, "name": issue.issue_type.1}),
    );
    put(
        "description",
        issue.description.clone().unwrap_or(Value::Null),
    );
    put("created", json!(jira_time(issue.created_ms)));
    put("comment", render_comments(issue, base));
    json!({
        "id": issue.id.to_string(),
        "key": issue.key,
        "self": issue_url(base, issue.id),
        "fields": out,
    })
}

#[cfg(test)]
mod tests;
