//! Routes and groups: which destinations a message goes to when the caller
//! does not name them, and what a group name stands for. Built from the
//! config (`config/routes.rs` parses and checks it); no IO, no clock.
//!
//! Routes are tried in order. A route matches when every condition it has
//! holds (severity, each label, source); the first match wins unless it
//! says `continue = true`, in which case the next ones are tried too, as in
//! Alertmanager's routing tree. When none matched, the default route (if
//! any) takes the message.

use std::collections::BTreeMap;

use crate::domain::{Message, Objective, Severity};

/// The name the default route is recorded under.
pub const DEFAULT_ROUTE_NAME: &str = "default";

/// How one label (or the source) is matched.
#[derive(Clone, Debug)]
pub enum Matcher {
    Equals(String),
    OneOf(Vec<String>),
    /// Anchored: the whole value must match.
    Regex(regex::Regex),
}

impl Matcher {
    /// A missing label or source never matches, whatever the matcher.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else {
            return false;
        };
        match self {
            Matcher::Equals(expected) => value == expected,
            Matcher::OneOf(set) => set.iter().any(|v| v == value),
            Matcher::Regex(regex) => regex.is_match(value),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Route {
    /// `name` in the config, else `routes[INDEX]`.
    pub name: String,
    /// Any of these severities; empty: any severity.
    pub severities: Vec<Severity>,
    pub labels: Vec<(String, Matcher)>,
    pub source: Option<Matcher>,
    /// Destinations and groups, in the config's order.
    pub targets: Vec<String>,
    /// Try the next routes too after this one matched.
    pub continue_matching: bool,
    /// `confirm`, `fallback` and `on_escalation`, groups expanded.
    pub objective: Option<Objective>,
}

impl Route {
    pub fn matches(&self, message: &Message) -> bool {
        let details = message.details();
        (self.severities.is_empty() || self.severities.contains(&message.severity()))
            && self.labels.iter().all(|(name, matcher)| {
                matcher.matches(details.labels.get(name).map(String::as_str))
            })
            && self
                .source
                .as_ref()
                .is_none_or(|matcher| matcher.matches(details.source.as_deref()))
    }
}

/// The `[groups]`, `[[routes]]` and `[default_route]` of a config.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// Group name to its destinations (groups do not nest).
    pub groups: BTreeMap<String, Vec<String>>,
    pub routes: Vec<Route>,
    /// Destinations and groups for a message no route matched.
    pub default_route: Option<Vec<String>>,
}

/// Where a message goes: the routes that matched, in order, and the
/// destinations they expanded to (each once, first mention first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    pub routes: Vec<String>,
    pub destinations: Vec<String>,
    /// The objective of the first matched route that has one. A resolve
    /// carries none: it closes an incident, nobody is paged for it.
    pub objective: Option<Objective>,
}

impl Routing {
    /// The routes a message matches and its destinations; `None` when no
    /// route matched and there is no default route.
    pub fn route(&self, message: &Message) -> Option<Routed> {
        let mut routes = Vec::new();
        let mut targets: Vec<&str> = Vec::new();
        let mut objective = None;
        for route in &self.routes {
            if !route.matches(message) {
                continue;
            }
            if objective.is_none() && !message.resolved() {
                objective = route.objective.clone();
            }
            routes.push(route.name.clone());
            targets.extend(route.targets.iter().map(String::as_str));
            if !route.continue_matching {
                break;
            }
        }
        if routes.is_empty() {
            let default_route = self.default_route.as_ref()?;
            routes.push(DEFAULT_ROUTE_NAME.to_owned());
            targets.extend(default_route.iter().map(String::as_str));
        }
        Some(Routed {
            routes,
            destinations: self.expand(targets),
            objective,
        })
    }

    /// The objective of the first route the message matches that has one
    /// (none for a resolve). Costs nothing when no route has an objective.
    pub fn objective_for(&self, message: &Message) -> Option<Objective> {
        if message.resolved() || self.routes.iter().all(|r| r.objective.is_none()) {
            return None;
        }
        self.route(message)?.objective
    }

    pub fn is_group(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// Group names replaced by their destinations; each destination once,
    /// where it was first named. Other names are kept as they are (the
    /// caller checks that they are configured).
    pub fn expand<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |member: &str| {
            if !out.iter().any(|m| m == member) {
                out.push(member.to_owned());
            }
        };
        for name in names {
            match self.groups.get(name) {
                Some(members) => members.iter().for_each(|m| add(m)),
                None => add(name),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, severities: &[Severity], targets: &[&str], go_on: bool) -> Route {
        Route {
            name: name.into(),
            severities: severities.to_vec(),
            labels: Vec::new(),
            source: None,
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            continue_matching: go_on,
            objective: None,
        }
    }

    fn message(severity: Severity, labels: &[(&str, &str)], source: Option<&str>) -> Message {
        Message::new("t", "", severity, None)
            .unwrap()
            .with_details(crate::domain::MessageDetails {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                source: source.map(str::to_owned),
                ..Default::default()
            })
            .unwrap()
    }

    #[test]
    fn first_match_wins_unless_it_continues_and_groups_expand_once() {
        let mut payments = route("payments", &[Severity::P1], &["oncall", "jira"], true);
        payments.labels = vec![
            ("team".into(), Matcher::Equals("payments".into())),
            (
                "environment".into(),
                Matcher::OneOf(vec!["prod".into(), "staging".into()]),
            ),
        ];
        let mut bots = route("bots", &[], &["webhook"], false);
        bots.source = Some(Matcher::Regex(regex::Regex::new("^(?:bot-.*)$").unwrap()));
        let routing = Routing {
            groups: [(
                "oncall".to_owned(),
                vec!["slack".to_owned(), "pd".to_owned()],
            )]
            .into(),
            routes: vec![
                payments,
                bots,
                route("all-p1", &[Severity::P1], &["slack"], false),
            ],
            default_route: None,
        };
        let p1 = message(
            Severity::P1,
            &[("team", "payments"), ("environment", "prod")],
            Some("bot-7"),
        );
        let routed = routing.route(&p1).unwrap();
        assert_eq!(routed.routes, ["payments", "bots"]);
        assert_eq!(routed.destinations, ["slack", "pd", "jira", "webhook"]);
        let other_team = message(Severity::P1, &[("team", "web")], None);
        assert_eq!(routing.route(&other_team).unwrap().routes, ["all-p1"]);
        assert_eq!(routing.route(&message(Severity::P3, &[], None)), None);
        let with_default = Routing {
            default_route: Some(vec!["oncall".into()]),
            ..routing
        };
        let routed = with_default
            .route(&message(Severity::P3, &[], None))
            .unwrap();
        assert_eq!(routed.routes, [DEFAULT_ROUTE_NAME]);
        assert_eq!(routed.destinations, ["slack", "pd"]);
        assert_eq!(
            with_default.expand(["pd", "oncall", "x"]),
            ["pd", "slack", "x"]
        );
    }
}
