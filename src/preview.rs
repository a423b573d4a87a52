//! `herald preview`: the message of flags or of a JSON file, asked of the
//! server's `POST /v1/preview`, and the answer printed: the routes matched,
//! the destinations it would go to and, for each, the request bodies its
//! template renders (pretty here; `--json` gives the exact bytes), or why
//! its template fails. Nothing is stored or sent.

use std::path::PathBuf;

use crate::api::wire::{Preview, SendRequest};
use crate::domain::{Field, Link};

/// The message to preview: a JSON file (the body `POST /v1/broadcasts`
/// takes), flags, or both (flags add to the file's lists and replace its
/// other values).
#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    /// A JSON file holding the message, as POST /v1/broadcasts takes it.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The message's title, one line (required without --file).
    #[arg(long, required_unless_present = "file")]
    pub title: Option<String>,
    /// The message's text.
    #[arg(long)]
    pub body: Option<String>,
    /// P1..P5 (or critical, high, warning, low, info). Default P3.
    #[arg(long)]
    pub severity: Option<String>,
    /// Incident key.
    #[arg(long)]
    pub thread: Option<String>,
    /// A destination or group name; repeat. None: the routes decide.
    #[arg(long = "to")]
    pub to: Vec<String>,
    /// A label NAME=VALUE; repeat.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::client::parse_label)]
    pub labels: Vec<(String, String)>,
    /// A link TEXT=URL; repeat.
    #[arg(long = "link", value_name = "TEXT=URL", value_parser = crate::client::parse_link)]
    pub links: Vec<Link>,
    /// A field NAME=VALUE; repeat.
    #[arg(long = "field", value_name = "NAME=VALUE", value_parser = crate::client::parse_field)]
    pub fields: Vec<Field>,
    /// Who sends it.
    #[arg(long)]
    pub source: Option<String>,
    /// Short text for SMS and push.
    #[arg(long)]
    pub summary: Option<String>,
    /// Print the answer as JSON, for scripts.
    #[arg(long)]
    pub json: bool,
}

impl PreviewArgs {
    /// The request these arguments describe.
    pub fn request(&self) -> Result<SendRequest, String> {
        let mut request = match &self.file {
            None => SendRequest::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| {
                    format!(
                        "{}: not a message as POST /v1/broadcasts takes it: {e}",
                        path.display()
                    )
                })?
            }
        };
        let replace = |field: &mut Option<String>, value: &Option<String>| {
            if value.is_some() {
                field.clone_from(value);
            }
        };
        if let Some(title) = &self.title {
            request.title.clone_from(title);
        }
        replace(&mut request.body, &self.body);
        replace(&mut request.severity, &self.severity);
        replace(&mut request.thread, &self.thread);
        replace(&mut request.source, &self.source);
        replace(&mut request.summary, &self.summary);
        request.destinations.extend(self.to.iter().cloned());
        request.labels.extend(self.labels.iter().cloned());
        request.links.extend(self.links.iter().cloned());
        request.fields.extend(self.fields.iter().cloned());
        Ok(request)
    }
}

/// A form body (`a=1&b=x+y`, as Twilio and Zulip take) as `name: value`
/// lines, values decoded; `None` for anything else.
fn form_fields(body: &str) -> Option<String> {
    let looks_like_a_form = !body.is_empty()
        && body.split('&').all(|pair| {
            pair.split_once('=').is_some_and(|(name, _)| {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-%.".contains(&b))
            })
        });
    if !looks_like_a_form {
        return None;
    }
    let url = reqwest::Url::parse(&format!("http://form.invalid/?{body}")).ok()?;
    Some(
        url.query_pairs()
            .map(|(name, value)| format!("{name}: {value}"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// The answer, for people.
pub fn render(preview: &Preview) -> String {
    let mut out = if preview.routes.is_empty() {
        "routes: none (destinations named)\n".to_owned()
    } else {
        format!("routes: {}\n", preview.routes.join(" -> "))
    };
    out.push_str(&format!("destinations ({}):\n", preview.destinations.len()));
    for destination in &preview.destinations {
        out.push_str(&format!("  {} ({})\n", destination.name, destination.kind));
        if let Some(error) = &destination.error {
            out.push_str(&format!("    would fail: {error}\n"));
        }
        for request in &destination.requests {
            out.push_str(&format!("    {}\n", request.call));
            // Pretty for reading (JSON indented, a form's fields decoded,
            // one `name: value` each); --json has the exact bytes.
            let body = serde_json::from_str::<serde_json::Value>(&request.body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .or_else(|| form_fields(&request.body))
                .unwrap_or_else(|| request.body.clone());
            for line in body.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::wire::{PreviewDestination, PreviewRequest};

    #[test]
    fn a_form_body_is_shown_decoded_and_json_indented() {
        let preview = Preview {
            routes: Vec::new(),
            destinations: vec![PreviewDestination {
                name: "zulip".into(),
                kind: "zulip".into(),
                requests: vec![
                    PreviewRequest {
                        call: "POST /api/v1/messages".into(),
                        body: "type=stream&to=ops&content=**%5BP1%5D+Disk**%0A%0Afull+%26+more"
                            .into(),
                    },
                    PreviewRequest {
                        call: "POST webhook".into(),
                        body: r#"{"a":1}"#.into(),
                    },
                    PreviewRequest {
                        call: "POST text".into(),
                        body: "not a form at all".into(),
                    },
                ],
                error: None,
            }],
        };
        let shown = render(&preview);
        assert!(
            shown.contains("      type: stream\n      to: ops\n      content: **[P1] Disk**\n      \n      full & more\n"),
            "{shown}"
        );
        assert!(
            shown.contains("      {\n        \"a\": 1\n      }\n"),
            "{shown}"
        );
        assert!(shown.contains("      not a form at all\n"), "{shown}");
    }
}
