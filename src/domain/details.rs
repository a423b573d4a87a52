//! What a message carries beside its title and body: labels, links, fields,
//! its source and a short summary. Checked once, on the way in
//! ([`MessageDetails::validated`]); a `Message` only ever holds checked
//! details. Stored with the broadcast as one JSON text, so the same shape
//! (serde) is what the stores write and read back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::message::InvalidInput;

/// Labels per message at most.
pub const LABELS_MAX: usize = 32;
/// A label's name: 1 to this many characters of `A-Z a-z 0-9 _ . -`,
/// starting with a letter or `_` (Prometheus label names, plus `.` and `-`).
pub const LABEL_NAME_CHARS_MAX: usize = 64;
/// A label's value at most (characters, no control characters).
pub const LABEL_VALUE_CHARS_MAX: usize = 256;
/// Links per message at most.
pub const LINKS_MAX: usize = 16;
/// A link's text: trimmed, then 1 to this many characters.
pub const LINK_TEXT_CHARS_MAX: usize = 100;
/// A link's URL at most (characters).
pub const LINK_URL_CHARS_MAX: usize = 2048;
/// Fields per message at most.
pub const FIELDS_MAX: usize = 32;
/// A field's name: trimmed, then 1 to this many characters.
pub const FIELD_NAME_CHARS_MAX: usize = 64;
/// A field's value: trimmed, then 1 to this many characters.
pub const FIELD_VALUE_CHARS_MAX: usize = 1024;
/// The source (who sent it): trimmed, at most this many characters.
pub const SOURCE_CHARS_MAX: usize = 128;
/// The summary (for SMS, push): trimmed, at most this many characters.
pub const SUMMARY_CHARS_MAX: usize = 280;

/// A link shown with the message: a runbook, a dashboard, an incident page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub text: String,
    pub url: String,
}

/// A name/value fact shown with the message (service, environment, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    pub value: String,
}

/// Labels, links, fields, source and summary. Empty by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageDetails {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl MessageDetails {
    pub fn is_empty(&self) -> bool {
        self == &MessageDetails::default()
    }

    /// The details within every limit, texts trimmed (blank source and
    /// summary mean none), or the first problem with its field named
    /// (`labels.team`, `links[1].url`, `fields[0].value`, ...).
    pub fn validated(mut self) -> Result<MessageDetails, InvalidInput> {
        if self.labels.len() > LABELS_MAX {
            return Err(InvalidInput::new(
                "labels",
                format!(
                    "{} labels is over the limit of {LABELS_MAX}",
                    self.labels.len()
                ),
            ));
        }
        for (name, value) in &self.labels {
            check_label_name(name)?;
            let field = format!("labels.{name}");
            if value.chars().count() > LABEL_VALUE_CHARS_MAX {
                return Err(InvalidInput::new(
                    field,
                    format!("longer than {LABEL_VALUE_CHARS_MAX} characters"),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(InvalidInput::new(
                    field,
                    "must not contain control characters",
                ));
            }
        }
        if self.links.len() > LINKS_MAX {
            return Err(InvalidInput::new(
                "links",
                format!(
                    "{} links is over the limit of {LINKS_MAX}",
                    self.links.len()
                ),
            ));
        }
        for (index, link) in self.links.iter_mut().enumerate() {
            link.text = one_line(
                &format!("links[{index}].text"),
                &link.text,
                LINK_TEXT_CHARS_MAX,
            )?;
            check_url(&format!("links[{index}].url"), &link.url)?;
        }
        if self.fields.len() > FIELDS_MAX {
            return Err(InvalidInput::new(
                "fields",
                format!(
                    "{} fields is over the limit of {FIELDS_MAX}",
                    self.fields.len()
                ),
            ));
        }
        for (index, field) in self.fields.iter_mut().enumerate() {
            field.name = one_line(
                &format!("fields[{index}].name"),
                &field.name,
                FIELD_NAME_CHARS_MAX,
            )?;
            field.value = one_line(
                &format!("fields[{index}].value"),
                &field.value,
                FIELD_VALUE_CHARS_MAX,
            )?;
        }
        self.source = optional_line("source", self.source.as_deref(), SOURCE_CHARS_MAX)?;
        self.summary = optional_line("summary", self.summary.as_deref(), SUMMARY_CHARS_MAX)?;
        Ok(self)
    }
}

fn check_label_name(name: &str) -> Result<(), InvalidInput> {
    let starts_well = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !starts_well || !valid_chars || name.len() > LABEL_NAME_CHARS_MAX {
        // The name itself may be unprintable: it is quoted in the reason,
        // not put in the field.
        return Err(InvalidInput::new(
            "labels",
            format!(
                "label name {name:?} must be 1 to {LABEL_NAME_CHARS_MAX} characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or '_'"
            ),
        ));
    }
    Ok(())
}

/// Trimmed, then 1 to `chars_max` characters without control characters.
fn one_line(field: &str, text: &str, chars_max: usize) -> Result<String, InvalidInput> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty"));
    }
    if text.chars().count() > chars_max {
        return Err(InvalidInput::new(
            field,
            format!("longer than {chars_max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must be one line without control characters",
        ));
    }
    Ok(text.to_owned())
}

/// As [`one_line`], but blank means none.
fn optional_line(
    field: &str,
    text: Option<&str>,
    chars_max: usize,
) -> Result<Option<String>, InvalidInput> {
    match text.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => one_line(field, text, chars_max).map(Some),
    }
}

/// `http://` or `https://` (any case), a host (with an optional port) of
/// no whitespace, control characters, `/ ? # @ \` (so no credentials in the
/// URL), then optionally a path, query or fragment of no whitespace or
/// control characters. Not trimmed. The OpenAPI document spells the same
/// rule as a pattern.
pub fn check_url(field: &str, url: &str) -> Result<(), InvalidInput> {
    if url.chars().count() > LINK_URL_CHARS_MAX {
        return Err(InvalidInput::new(
            field,
            format!("longer than {LINK_URL_CHARS_MAX} characters"),
        ));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return Err(InvalidInput::new(
            field,
            "must be an http:// or https:// URL",
        ));
    };
    if let Some(bad) = rest.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidInput::new(
            field,
            format!("must not contain {bad:?}: encode it (%20 for a space)"),
        ));
    }
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    if host.is_empty() {
        return Err(InvalidInput::new(field, "has no host"));
    }
    if host.contains('@') {
        return Err(InvalidInput::new(
            field,
            "must not hold credentials (user@host): links are shown to everyone",
        ));
    }
    if host.contains('\\') {
        return Err(InvalidInput::new(field, "the host must not contain '\\'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(text: &str, url: &str) -> MessageDetails {
        MessageDetails {
            links: vec![Link {
                text: text.into(),
                url: url.into(),
            }],
            ..MessageDetails::default()
        }
    }

    #[test]
    fn limits_are_refused_naming_the_field() {
        let field_of = |d: MessageDetails| d.validated().unwrap_err().field;
        let many: BTreeMap<String, String> = (0..=LABELS_MAX)
            .map(|i| (format!("l{i}"), String::new()))
            .collect();
        let labels = MessageDetails {
            labels: many,
            ..MessageDetails::default()
        };
        assert_eq!(field_of(labels), "labels");
        let long_value = MessageDetails {
            labels: [("team".into(), "x".repeat(LABEL_VALUE_CHARS_MAX + 1))].into(),
            ..MessageDetails::default()
        };
        assert_eq!(field_of(long_value), "labels.team");
        let bad_name = MessageDetails {
            labels: [("1team".into(), "x".into())].into(),
            ..MessageDetails::default()
        };
        assert_eq!(field_of(bad_name), "labels");
        for url in [
            "ftp://x",
            "javascript:alert(1)",
            "https://",
            "https://u:p@host/",
            "https://host/a b",
            "https://host/\u{0}",
        ] {
            assert_eq!(field_of(link("runbook", url)), "links[0].url", "{url}");
        }
        assert_eq!(field_of(link(" ", "https://x")), "links[0].text");
        let fields = MessageDetails {
            fields: vec![Field {
                name: "service".into(),
                value: "v\nw".into(),
            }],
            ..MessageDetails::default()
        };
        assert_eq!(field_of(fields), "fields[0].value");
        let summary = MessageDetails {
            summary: Some("s".repeat(SUMMARY_CHARS_MAX + 1)),
            ..MessageDetails::default()
        };
        assert_eq!(field_of(summary), "summary");
    }

    #[test]
    fn texts_are_trimmed_and_blank_optionals_are_none() {
        let details = MessageDetails {
            labels: [("service".into(), "checkout".into())].into(),
            links: vec![Link {
                text: " Runbook ".into(),
                url: "HTTPS://wiki.example/run?x=1#a".into(),
            }],
            fields: vec![Field {
                name: " region ".into(),
                value: "eu-west-1".into(),
            }],
            source: Some("  ".into()),
            summary: Some(" checkout down ".into()),
        }
        .validated()
        .unwrap();
        assert_eq!(details.links[0].text, "Runbook");
        assert_eq!(details.fields[0].name, "region");
        assert_eq!(details.source, None);
        assert_eq!(details.summary.as_deref(), Some("checkout down"));
        let json = serde_json::to_string(&details).unwrap();
        let back: MessageDetails = serde_json::from_str(&json).unwrap();
        assert_eq!(back, details);
        assert!(MessageDetails::default().is_empty());
        assert_eq!(
            serde_json::to_string(&MessageDetails::default()).unwrap(),
            "{}"
        );
    }
}
