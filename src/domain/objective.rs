//! Delivery objectives: "confirmed on at least `any` of `of` within
//! `within_ms`", and what happens when that time passes without it (the
//! fallback destinations get the message, `on_escalation` a meta-alert).
//! Plain rules, no IO, no clock: `now_ms` is passed in.

use serde::{Deserialize, Serialize};

use super::{
    format_rfc3339_ms, DeliveryState, InvalidInput, Message, MessageDetails, BODY_BYTES_MAX,
    TITLE_CHARS_MAX,
};

/// The shortest `within` an objective may have: less is not a deadline a
/// human can meet, and would escalate before the first retry.
pub const OBJECTIVE_WITHIN_MS_MIN: i64 = 1_000;
/// The longest `within`: a day (an objective is about minutes).
pub const OBJECTIVE_WITHIN_MS_MAX: i64 = 24 * 3_600 * 1_000;
/// A destination's last error quoted in a meta-alert, at most (characters).
const META_ALERT_ERROR_CHARS_MAX: usize = 300;
/// The `source` of a meta-alert, so routes and readers can tell it apart.
pub const META_ALERT_SOURCE: &str = "herald/escalation";

/// An objective as a broadcast carries it: destinations only (groups are
/// expanded when it is built), stored with the broadcast as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objective {
    /// How many of `of` must confirm.
    pub any: u32,
    /// The destinations that count.
    pub of: Vec<String>,
    /// From the broadcast's acceptance to its deadline.
    pub within_ms: i64,
    /// Where the message goes when the deadline passes unmet.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Who gets the meta-alert naming the destinations that failed.
    #[serde(default)]
    pub on_escalation: Option<String>,
}

impl Objective {
    /// Checks the objective on its own; `field` is where it came from
    /// (`routes[0]` or `objective`), for the error. That the names are
    /// configured destinations is the caller's check.
    pub fn validated(self, field: &str) -> Result<Objective, InvalidInput> {
        if self.of.is_empty() {
            return Err(InvalidInput::new(
                format!("{field}.confirm.of"),
                "name at least one destination or group",
            ));
        }
        if self.any == 0 || self.any as usize > self.of.len() {
            return Err(InvalidInput::new(
                format!("{field}.confirm.any"),
                format!(
                    "must be from 1 to the number of destinations in `of` ({})",
                    self.of.len()
                ),
            ));
        }
        if !(OBJECTIVE_WITHIN_MS_MIN..=OBJECTIVE_WITHIN_MS_MAX).contains(&self.within_ms) {
            return Err(InvalidInput::new(
                format!("{field}.confirm.within"),
                "must be from 1s to 24h",
            ));
        }
        if self.fallback.is_empty() && self.on_escalation.is_none() {
            return Err(InvalidInput::new(
                format!("{field}.fallback"),
                "an objective needs `fallback` destinations or an `on_escalation` destination (or both): \
                 otherwise missing it would tell nobody",
            ));
        }
        if let Some(both) = self.fallback.iter().find(|f| self.of.contains(f)) {
            return Err(InvalidInput::new(
                format!("{field}.fallback"),
                format!("{both:?} is already one of the destinations in `confirm.of`; a fallback is another way to reach people"),
            ));
        }
        Ok(self)
    }

    /// The deadline of a broadcast accepted at `created_at_ms`.
    pub fn deadline_ms(&self, created_at_ms: i64) -> i64 {
        created_at_ms.saturating_add(self.within_ms)
    }
}

/// `"60s"`, `"10m"`, `"1h"`: a duration in milliseconds (whole seconds at
/// least: no objective is shorter than a second).
pub fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: i64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration: write a whole number and a unit, like \"60s\"")
    })?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use s, m or h (like \"60s\")"
            ))
        }
    };
    number
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A duration as the config writes it, for messages.
pub fn format_duration_ms(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// What was decided when the deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectiveDecision {
    Met,
    Escalated,
}

impl ObjectiveDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectiveDecision::Met => "met",
            ObjectiveDecision::Escalated => "escalated",
        }
    }

    pub fn parse(text: &str) -> Option<ObjectiveDecision> {
        match text {
            "met" => Some(ObjectiveDecision::Met),
            "escalated" => Some(ObjectiveDecision::Escalated),
            _ => None,
        }
    }
}

/// A broadcast's objective as stored: what was asked, the deadline, and
/// the decision once taken (exactly once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectiveRecord {
    pub objective: Objective,
    pub deadline_ms: i64,
    pub decision: Option<ObjectiveDecision>,
    pub decided_at_ms: Option<i64>,
    /// The fallback destinations the escalation sent the message to.
    pub escalated_to: Vec<String>,
    /// The child broadcast carrying the message to `escalated_to`.
    pub fallback_broadcast_id: Option<String>,
    /// The child broadcast carrying the meta-alert to `on_escalation`.
    pub meta_alert_broadcast_id: Option<String>,
}

/// One delivery of the broadcast, as far as an objective cares.
#[derive(Clone, Debug)]
pub struct ObjectiveInput<'a> {
    pub destination: &'a str,
    pub state: DeliveryState,
    /// For a confirmed delivery: when it was confirmed.
    pub updated_at_ms: i64,
    pub summary: String,
    pub last_error: Option<&'a str>,
}

/// When the objective was met (the `any`-th confirmation among `of`), if
/// it was.
pub fn met_at_ms(objective: &Objective, deliveries: &[ObjectiveInput<'_>]) -> Option<i64> {
    let mut confirmed: Vec<i64> = deliveries
        .iter()
        .filter(|d| {
            d.state == DeliveryState::Confirmed && objective.of.iter().any(|o| o == d.destination)
        })
        .map(|d| d.updated_at_ms)
        .collect();
    confirmed.sort_unstable();
    confirmed.get(objective.any as usize - 1).copied()
}

/// The objective's state as a reader sees it: met, pending or escalated
/// (an escalated objective met later keeps both facts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectiveStatus {
    /// `met`, `pending` or `escalated`.
    pub state: &'static str,
    pub confirmed: Vec<String>,
    pub met_at_ms: Option<i64>,
    pub escalated_at_ms: Option<i64>,
    /// "pending (1 of 3, 42 s left)", "met at ...", "escalated at ... to [...]".
    pub summary: String,
}

pub fn objective_status(
    record: &ObjectiveRecord,
    deliveries: &[ObjectiveInput<'_>],
    now_ms: i64,
) -> ObjectiveStatus {
    let objective = &record.objective;
    let confirmed: Vec<String> = objective
        .of
        .iter()
        .filter(|name| {
            deliveries
                .iter()
                .any(|d| d.destination == *name && d.state == DeliveryState::Confirmed)
        })
        .cloned()
        .collect();
    let met_at = met_at_ms(objective, deliveries);
    let of_count = format!("{} of {}", objective.any, objective.of.len());
    let escalated_at = (record.decision == Some(ObjectiveDecision::Escalated))
        .then_some(record.decided_at_ms)
        .flatten();
    let (state, summary) = match (escalated_at, met_at) {
        (Some(at), met) => {
            let mut summary = format!(
                "escalated at {} to [{}]",
                format_rfc3339_ms(at),
                record.escalated_to.join(", ")
            );
            if let Some(met) = met {
                summary.push_str(&format!(
                    "; met later, at {} ({})",
                    format_rfc3339_ms(met),
                    of_count
                ));
            }
            ("escalated", summary)
        }
        (None, Some(met)) => (
            "met",
            format!("met at {} ({of_count})", format_rfc3339_ms(met)),
        ),
        (None, None) => {
            let left_s = ((record.deadline_ms - now_ms).max(0) + 999) / 1_000;
            (
                "pending",
                format!(
                    "pending ({} of {}, {left_s} s left)",
                    confirmed.len(),
                    objective.any
                ),
            )
        }
    };
    ObjectiveStatus {
        state,
        confirmed,
        met_at_ms: met_at,
        escalated_at_ms: escalated_at,
        summary,
    }
}

/// The meta-alert sent to `on_escalation`: which destinations failed to
/// confirm within the deadline, and their last errors.
pub fn meta_alert_message(
    broadcast_id: &str,
    message: &Message,
    objective: &Objective,
    deliveries: &[ObjectiveInput<'_>],
    escalated_to: &[String],
) -> Result<Message, InvalidInput> {
    let title: String = format!("Objective missed: {}", message.title())
        .chars()
        .take(TITLE_CHARS_MAX)
        .collect();
    let mut body = format!(
        "Broadcast {broadcast_id} ({}) was not confirmed on {} of [{}] within {}.\n",
        message.severity().as_str(),
        objective.any,
        objective.of.join(", "),
        format_duration_ms(objective.within_ms),
    );
    if escalated_to.is_empty() {
        body.push_str("No fallback destination was reached.\n");
    } else {
        body.push_str(&format!("Escalated to: {}.\n", escalated_to.join(", ")));
    }
    body.push_str("Not confirmed:\n");
    for name in &objective.of {
        let line = match deliveries.iter().find(|d| d.destination == name) {
            Some(d) if d.state == DeliveryState::Confirmed => continue,
            Some(d) => {
                let error: String = d
                    .last_error
                    .unwrap_or("no error recorded")
                    .chars()
                    .take(META_ALERT_ERROR_CHARS_MAX)
                    .collect();
                format!("- {name}: {}; last error: {error}\n", d.summary)
            }
            None => format!("- {name}: not a destination of this broadcast\n"),
        };
        if body.len() + line.len() > BODY_BYTES_MAX {
            break;
        }
        body.push_str(&line);
    }
    let details = MessageDetails {
        source: Some(META_ALERT_SOURCE.to_owned()),
        labels: [("herald_broadcast".to_owned(), broadcast_id.to_owned())].into(),
        ..Default::default()
    };
    Message::new(&title, &body, message.severity(), None)?.with_details(details)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective() -> Objective {
        Objective {
            any: 1,
            of: vec!["slack".into(), "teams".into()],
            within_ms: 10_000,
            fallback: vec!["sms".into()],
            on_escalation: Some("pd".into()),
        }
    }

    fn input(destination: &str, state: DeliveryState, at: i64) -> ObjectiveInput<'_> {
        ObjectiveInput {
            destination,
            state,
            updated_at_ms: at,
            summary: state.as_str().to_owned(),
            last_error: Some("HTTP 503"),
        }
    }

    #[test]
    fn durations_parse_with_units_and_refuse_the_rest() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert!(parse_duration_ms("500ms").is_err());
        assert!(parse_duration_ms(" 5s").is_err());
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("60")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration_ms("s").is_err());
        assert!(parse_duration_ms("1.5s").is_err());
        assert_eq!(format_duration_ms(90_000), "90s");
    }

    #[test]
    fn validation_names_the_key_and_the_reason() {
        assert!(objective().validated("objective").is_ok());
        let too_many = Objective {
            any: 3,
            ..objective()
        };
        assert_eq!(
            too_many.validated("routes[0]").unwrap_err().field,
            "routes[0].confirm.any"
        );
        let short = Objective {
            within_ms: 10,
            ..objective()
        };
        assert_eq!(
            short.validated("objective").unwrap_err().field,
            "objective.confirm.within"
        );
        let nobody = Objective {
            fallback: vec![],
            on_escalation: None,
            ..objective()
        };
        assert_eq!(
            nobody.validated("objective").unwrap_err().field,
            "objective.fallback"
        );
        let overlap = Objective {
            fallback: vec!["teams".into()],
            ..objective()
        };
        assert!(overlap.validated("objective").is_err());
    }

    #[test]
    fn status_is_pending_then_met_or_escalated_and_keeps_both_facts() {
        let mut record = ObjectiveRecord {
            objective: objective(),
            deadline_ms: 10_000,
            decision: None,
            decided_at_ms: None,
            escalated_to: vec![],
            fallback_broadcast_id: None,
            meta_alert_broadcast_id: None,
        };
        let pending = [
            input("slack", DeliveryState::Retrying, 0),
            input("teams", DeliveryState::Retrying, 0),
        ];
        let status = objective_status(&record, &pending, 2_500);
        assert_eq!(status.state, "pending");
        assert_eq!(status.summary, "pending (0 of 1, 8 s left)");
        let met = [
            input("slack", DeliveryState::Retrying, 0),
            input("teams", DeliveryState::Confirmed, 4_000),
        ];
        let status = objective_status(&record, &met, 5_000);
        assert_eq!(status.state, "met");
        assert_eq!(status.met_at_ms, Some(4_000));
        record.decision = Some(ObjectiveDecision::Escalated);
        record.decided_at_ms = Some(10_050);
        record.escalated_to = vec!["sms".into()];
        let status = objective_status(&record, &met, 20_000);
        assert_eq!(status.state, "escalated");
        assert_eq!(status.escalated_at_ms, Some(10_050));
        assert_eq!(status.met_at_ms, Some(4_000));
        assert!(status.summary.contains("to [sms]"), "{}", status.summary);
        assert!(status.summary.contains("met later"), "{}", status.summary);
    }

    #[test]
    fn the_meta_alert_names_what_failed_and_why() {
        let message =
            Message::new("DB down", "", super::super::Severity::P1, Some("INC-1")).unwrap();
        let deliveries = [
            input("slack", DeliveryState::Retrying, 0),
            input("teams", DeliveryState::Dead, 0),
        ];
        let alert = meta_alert_message(
            "01ABC",
            &message,
            &objective(),
            &deliveries,
            &["sms".into()],
        )
        .unwrap();
        assert_eq!(alert.title(), "Objective missed: DB down");
        assert!(alert
            .body()
            .contains("- slack: retrying; last error: HTTP 503"));
        assert!(alert.body().contains("- teams: dead"));
        assert!(alert.body().contains("Escalated to: sms."));
        assert_eq!(alert.thread(), None);
    }
}
