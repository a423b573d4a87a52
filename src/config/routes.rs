//! `[groups]`, `[[routes]]` and `[default_route]` of the config file, read
//! and checked into a [`Routing`]. A child module of `config` (it reports
//! through the same `Problems`, so every problem of the file is listed in
//! one pass, with its line and key).

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{closest_word, entry, fields_of, unknown_keys, Problems};
use crate::domain::{validate_destination_name, Objective, Severity};
use crate::routing::{Matcher, Route, Routing, DEFAULT_ROUTE_NAME};

/// Routes per config at most.
pub const ROUTES_MAX: usize = 1_000;
/// A route's regular expression at most (characters).
pub const ROUTE_REGEX_CHARS_MAX: usize = 1_000;
/// The compiled size of one route regex at most (bytes), so a config
/// cannot make matching slow or large.
const ROUTE_REGEX_COMPILED_BYTES_MAX: usize = 256 * 1024;

#[derive(Deserialize)]
#[serde(untagged)]
enum FileMatcher {
    Equals(String),
    OneOf(Vec<String>),
    Regex { regex: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileSeverities {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct FileRoute {
    name: Option<Spanned<String>>,
    severity: Option<Spanned<FileSeverities>>,
    source: Option<Spanned<FileMatcher>>,
    #[serde(default)]
    labels: BTreeMap<String, Spanned<FileMatcher>>,
    destinations: Spanned<Vec<String>>,
    #[serde(default, rename = "continue")]
    continue_matching: bool,
    confirm: Option<Spanned<FileConfirm>>,
    fallback: Option<Spanned<Vec<String>>>,
    on_escalation: Option<Spanned<String>>,
}

/// `confirm = { any = 1, of = ["slack", "teams"], within = "60s" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfirm {
    any: u32,
    of: Vec<String>,
    within: String,
}

#[derive(Deserialize)]
struct FileDefaultRoute {
    destinations: Spanned<Vec<String>>,
}

/// Reads the routing sections; `declared` holds every destination named in
/// the file (valid or not), so a route to a destination with its own
/// problem is not also called unknown.
pub(super) fn parse(
    document: &DeTable<'_>,
    declared: &[String],
    problems: &Problems<'_>,
) -> Routing {
    let mut routing = Routing::default();
    let groups: BTreeMap<String, Spanned<Vec<String>>> = entry(document, "groups")
        .and_then(|value| problems.read("groups", value))
        .unwrap_or_default();
    let declared_refs: Vec<&str> = declared.iter().map(String::as_str).collect();
    for (name, members) in groups {
        let key = format!("groups.{name}");
        let span = Some(members.span());
        if let Err(reason) = validate_destination_name(&name) {
            problems.add(
                span.clone(),
                format!("{key}: {}", reason.replace("destination", "group")),
            );
        }
        if declared.contains(&name) {
            problems.add(
                span.clone(),
                format!("{key}: a destination has this name; give the group another one"),
            );
        }
        if members.get_ref().is_empty() {
            problems.add(
                span.clone(),
                format!("{key}: name at least one destination"),
            );
        }
        for member in members.get_ref() {
            if !declared.contains(member) {
                problems.add(
                    span.clone(),
                    format!(
                        "{key}: unknown destination {member:?} (groups hold destinations, not groups); {}",
                        suggestion(member, &declared_refs)
                    ),
                );
            }
        }
        routing.groups.insert(name, members.into_inner());
    }
    let mut targets_known: Vec<&str> = declared_refs.clone();
    targets_known.extend(routing.groups.keys().map(String::as_str));
    let check_targets = |key: &str, targets: &Spanned<Vec<String>>| {
        if targets.get_ref().is_empty() {
            problems.add(
                Some(targets.span()),
                format!("{key}: name at least one destination or group"),
            );
        }
        for target in targets.get_ref() {
            if !targets_known.contains(&target.as_str()) {
                problems.add(
                    Some(targets.span()),
                    format!(
                        "{key}: unknown destination or group {target:?}; {}",
                        suggestion(target, &targets_known)
                    ),
                );
            }
        }
    };

    match entry(document, "routes") {
        None => {}
        Some(value) => match value.get_ref() {
            DeValue::Array(items) => {
                if items.len() > ROUTES_MAX {
                    problems.add(
                        Some(value.span()),
                        format!(
                            "routes: {} routes is over the limit of {ROUTES_MAX}",
                            items.len()
                        ),
                    );
                }
                for (index, item) in items.iter().enumerate() {
                    let path = format!("routes[{index}]");
                    if let Some(table) = item.get_ref().as_table() {
                        unknown_keys(&path, table, fields_of::<FileRoute>(), problems);
                    }
                    let Some(mut file) = problems.read::<FileRoute>(&path, item) else {
                        continue;
                    };
                    check_targets(&format!("{path}.destinations"), &file.destinations);
                    let objective = objective_of(
                        &path,
                        &mut file,
                        &routing,
                        declared,
                        &targets_known,
                        problems,
                    );
                    if let Some(mut route) = parse_route(&path, index, file, problems) {
                        route.objective = objective;
                        if routing.routes.iter().any(|r| r.name == route.name)
                            || route.name == DEFAULT_ROUTE_NAME
                        {
                            problems.add(
                                Some(item.span()),
                                format!(
                                    "{path}.name: {:?} is taken (by another route, or the default route); names are unique",
                                    route.name
                                ),
                            );
                        }
                        routing.routes.push(route);
                    }
                }
            }
            other => problems.add(
                Some(value.span()),
                format!(
                    "routes: expected [[routes]] tables, found a {}",
                    other.type_str()
                ),
            ),
        },
    }

    if let Some(value) = entry(document, "default_route") {
        if let Some(table) = value.get_ref().as_table() {
            unknown_keys(
                "default_route",
                table,
                fields_of::<FileDefaultRoute>(),
                problems,
            );
        }
        if let Some(file) = problems.read::<FileDefaultRoute>("default_route", value) {
            check_targets("default_route.destinations", &file.destinations);
            routing.default_route = Some(file.destinations.into_inner());
        }
    }
    routing
}

/// A route's `confirm`, `fallback` and `on_escalation`, checked and with
/// groups expanded; `None` (with the problems reported) when it has none
/// or they are wrong.
fn objective_of(
    path: &str,
    file: &mut FileRoute,
    routing: &Routing,
    declared: &[String],
    targets_known: &[&str],
    problems: &Problems<'_>,
) -> Option<Objective> {
    let confirm = file.confirm.take();
    let fallback = file.fallback.take();
    let on_escalation = file.on_escalation.take();
    let Some(confirm) = confirm else {
        if let Some(span) = fallback
            .as_ref()
            .map(Spanned::span)
            .or(on_escalation.as_ref().map(Spanned::span))
        {
            problems.add(
                Some(span),
                format!("{path}: `fallback` and `on_escalation` need `confirm` (the objective they act on)"),
            );
        }
        return None;
    };
    let span = confirm.span();
    let mut valid = true;
    let mut check_names = |key: &str, names: &[String], span: std::ops::Range<usize>| {
        for name in names {
            if !targets_known.contains(&name.as_str()) {
                problems.add(
                    Some(span.clone()),
                    format!(
                        "{path}.{key}: unknown destination or group {name:?}; {}",
                        suggestion(name, targets_known)
                    ),
                );
                valid = false;
            }
        }
    };
    let confirm = confirm.into_inner();
    check_names("confirm.of", &confirm.of, span.clone());
    if let Some(fallback) = &fallback {
        check_names("fallback", fallback.get_ref(), fallback.span());
    }
    if let Some(target) = &on_escalation {
        if !declared.contains(target.get_ref()) {
            let declared_refs: Vec<&str> = declared.iter().map(String::as_str).collect();
            problems.add(
                Some(target.span()),
                format!(
                    "{path}.on_escalation: unknown destination {:?} (a destination, not a group); {}",
                    target.get_ref(),
                    suggestion(target.get_ref(), &declared_refs)
                ),
            );
            valid = false;
        }
    }
    let within_ms = match crate::domain::parse_duration_ms(&confirm.within) {
        Ok(ms) => ms,
        Err(reason) => {
            problems.add(
                Some(span.clone()),
                format!("{path}.confirm.within: {reason}"),
            );
            return None;
        }
    };
    if !valid {
        return None;
    }
    let of = routing.expand(confirm.of.iter().map(String::as_str));
    let route_destinations = routing.expand(file.destinations.get_ref().iter().map(String::as_str));
    if let Some(outside) = of.iter().find(|name| !route_destinations.contains(name)) {
        problems.add(
            Some(span),
            format!(
                "{path}.confirm.of: {outside:?} is not one of this route's destinations; an objective counts confirmations of the route's own deliveries"
            ),
        );
        return None;
    }
    let objective = Objective {
        any: confirm.any,
        of,
        within_ms,
        fallback: fallback
            .map(|f| routing.expand(f.get_ref().iter().map(String::as_str)))
            .unwrap_or_default(),
        on_escalation: on_escalation.map(Spanned::into_inner),
    };
    match objective.validated(path) {
        Ok(objective) => Some(objective),
        Err(error) => {
            problems.add(Some(span), error.to_string());
            None
        }
    }
}

fn suggestion(name: &str, known: &[&str]) -> String {
    match closest_word(name, known) {
        Some(intended) => format!("did you mean {intended}?"),
        None => format!("the names are {}", known.join(", ")),
    }
}

fn parse_route(
    path: &str,
    index: usize,
    file: FileRoute,
    problems: &Problems<'_>,
) -> Option<Route> {
    let mut valid = true;
    let name = match &file.name {
        Some(name) => {
            if let Err(reason) = validate_destination_name(name.get_ref()) {
                problems.add(
                    Some(name.span()),
                    format!("{path}.name: {}", reason.replace("destination", "route")),
                );
                valid = false;
            }
            name.get_ref().clone()
        }
        None => path.to_owned(),
    };
    let mut severities = Vec::new();
    if let Some(severity) = &file.severity {
        let words = match severity.get_ref() {
            FileSeverities::One(word) => vec![word.clone()],
            FileSeverities::Many(words) => words.clone(),
        };
        for word in words {
            match Severity::parse(&word) {
                Ok(parsed) => severities.push(parsed),
                Err(error) => {
                    problems.add(
                        Some(severity.span()),
                        format!("{path}.severity: {}", error.reason),
                    );
                    valid = false;
                }
            }
        }
    }
    let mut labels = Vec::new();
    for (label, matcher) in &file.labels {
        match matcher_of(&format!("{path}.labels.{label}"), matcher, problems) {
            Some(parsed) => labels.push((label.clone(), parsed)),
            None => valid = false,
        }
    }
    let source = match &file.source {
        None => None,
        Some(matcher) => match matcher_of(&format!("{path}.source"), matcher, problems) {
            Some(parsed) => Some(parsed),
            None => {
                valid = false;
                None
            }
        },
    };
    let _ = index;
    valid.then(|| Route {
        name,
        severities,
        labels,
        source,
        targets: file.destinations.into_inner(),
        continue_matching: file.continue_matching,
        objective: None,
    })
}

/// A string is equality, a list is a set, `{ regex = "..." }` an anchored
/// regular expression (the whole value must match).
fn matcher_of(
    key: &str,
    matcher: &Spanned<FileMatcher>,
    problems: &Problems<'_>,
) -> Option<Matcher> {
    match matcher.get_ref() {
        FileMatcher::Equals(value) => Some(Matcher::Equals(value.clone())),
        FileMatcher::OneOf(values) => {
            if values.is_empty() {
                problems.add(
                    Some(matcher.span()),
                    format!("{key}: an empty list matches nothing; list at least one value"),
                );
                return None;
            }
            Some(Matcher::OneOf(values.clone()))
        }
        FileMatcher::Regex { regex } => {
            if regex.chars().count() > ROUTE_REGEX_CHARS_MAX {
                problems.add(
                    Some(matcher.span()),
                    format!("{key}: the regex is longer than {ROUTE_REGEX_CHARS_MAX} characters"),
                );
                return None;
            }
            match regex::RegexBuilder::new(&format!("^(?:{regex})$"))
                .size_limit(ROUTE_REGEX_COMPILED_BYTES_MAX)
                .build()
            {
                Ok(compiled) => Some(Matcher::Regex(compiled)),
                Err(error) => {
                    let reason = error.to_string().replace('\n', " ");
                    problems.add(
                        Some(matcher.span()),
                        format!("{key}: invalid regex {regex:?}: {reason}"),
                    );
                    None
                }
            }
        }
    }
}
