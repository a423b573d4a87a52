//! A destination's `template` (inline), `template_file` (a path relative
//! to the config file) and `mentions` (who to mention per severity). A
//! template is compiled and rendered against a rich sample message here,
//! when the config loads (`check-config`, serve, reload); a problem names
//! the file, the destination's key and the template's line.

use super::*;
use crate::template::{self, Mentions, Rendering, TemplateError};

/// The rendering a destination's table asks for: `Some(None)` when it sets
/// none of the keys, `None` when one of them has a problem (noted).
pub(super) fn parse_rendering(
    key: &str,
    d: &FileDestination,
    file: &str,
    problems: &Problems<'_>,
) -> Option<Option<Rendering>> {
    if d.template.is_none() && d.template_file.is_none() && d.mentions.is_none() {
        return Some(None);
    }
    let mentions = match &d.mentions {
        None => Some(Mentions::default()),
        Some(table) => Mentions::parse(
            table
                .get_ref()
                .iter()
                .map(|(severity, text)| (severity.as_str(), text.as_str())),
        )
        .map_err(|(severity, reason)| {
            problems.add(
                Some(table.span()),
                format!(
                    "{key}.mentions.{severity}: {reason}; write mentions = {{ P1 = \"@here\" }}"
                ),
            )
        })
        .ok(),
    };
    let template = match (&d.template, &d.template_file) {
        (Some(_), Some(path)) => {
            problems.add(
                Some(path.span()),
                format!("{key}.template_file: set template or template_file, not both; remove one"),
            );
            None
        }
        (Some(inline), None) => {
            let checked = template::check(inline.get_ref(), &mentions.clone().unwrap_or_default());
            match checked {
                Ok(compiled) => Some(Some(compiled)),
                Err(error) => {
                    note_inline(key, inline, &error, problems);
                    None
                }
            }
        }
        (None, Some(path)) => {
            let base = Path::new(file).parent().unwrap_or(Path::new(""));
            let full = base.join(path.get_ref());
            match std::fs::read_to_string(&full) {
                Err(e) => {
                    problems.add(
                        Some(path.span()),
                        format!(
                            "{key}.template_file: cannot read {}: {e}; the path is relative to the config file",
                            full.display()
                        ),
                    );
                    None
                }
                Ok(source) => {
                    match template::check(&source, &mentions.clone().unwrap_or_default()) {
                        Ok(compiled) => Some(Some(compiled)),
                        Err(error) => {
                            let at = match error.line {
                                Some(line) => format!("{}:{line}", full.display()),
                                None => full.display().to_string(),
                            };
                            problems.add(
                                Some(path.span()),
                                format!("{key}.template_file: {at}: {}", error.reason),
                            );
                            None
                        }
                    }
                }
            }
        }
        (None, None) => Some(None),
    };
    Some(Some(Rendering {
        template: template?,
        mentions: mentions?,
    }))
}

/// A problem of an inline template, noted at the file's line of the
/// template's failing line (a `"""` string starts on the next line).
fn note_inline(
    key: &str,
    inline: &Spanned<String>,
    error: &TemplateError,
    problems: &Problems<'_>,
) {
    let start = inline.span().start.min(problems.source.len());
    let value_line = problems.source.as_bytes()[..start]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let rest = &problems.source[start..];
    let first_line = if ["\"\"\"\n", "\"\"\"\r\n", "'''\n", "'''\r\n"]
        .iter()
        .any(|open| rest.starts_with(open))
    {
        value_line + 1
    } else {
        value_line
    };
    let (line, at) = match error.line {
        Some(line) => (first_line + line - 1, format!("template line {line}")),
        None => (value_line, "template".to_owned()),
    };
    problems.list.borrow_mut().push(ConfigProblem {
        line: Some(line),
        message: format!("{key}.template: {at}: {}", error.reason),
    });
}

/// Sets a destination's rendering; a kind that renders no template takes
/// none of the keys.
pub(super) fn apply_rendering(
    key: &str,
    d: &FileDestination,
    target: &mut Target,
    rendering: Rendering,
    problems: &Problems<'_>,
) {
    let kind = target.kind();
    match target.rendering_mut() {
        Some(slot) => *slot = rendering,
        None => {
            let span = d
                .template
                .as_ref()
                .or(d.template_file.as_ref())
                .map(|v| v.span())
                .or(d.mentions.as_ref().map(|v| v.span()));
            problems.add(
                span,
                format!("{key}: kind {kind} takes no template or mentions yet; remove them"),
            );
        }
    }
}
