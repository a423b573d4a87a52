//! A Jira destination's keys: the site's `url`, `project`, `issue_type`,
//! `email` with the API token in `secret_env` (or `secret`),
//! `resolve_transition`, `search_recheck_ms`.

use crate::config::{FileDestination, KindConfig, Secret, Target, TargetKeys};

pub const KIND: KindConfig = KindConfig {
    name: "jira",
    default_rate: Some((10.0, 10)),
    keys: &[
        "project",
        "issue_type",
        "email",
        "resolve_transition",
        "search_recheck_ms",
    ],
    takes_secret: true,
    secret_allowed,
    parse,
};

fn secret_allowed(_: &FileDestination) -> bool {
    true
}

/// Where a person opens what a Jira delivery made: its issue
/// (`{site}/browse/OPS-7`), or the comment an update or resolve added
/// (`OPS-7/comment/10042`: the issue, focused on that comment). `None`
/// for another kind's target or a reference of another shape.
pub fn remote_url(target: &Target, remote_ref: &str) -> Option<String> {
    let Target::Jira { site_url, .. } = target else {
        return None;
    };
    let (issue, comment) = match remote_ref.split_once("/comment/") {
        Some((issue, comment)) => (issue, Some(comment)),
        None => (remote_ref, None),
    };
    let is_digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let (project, number) = issue.rsplit_once('-')?;
    let project_ok = project.starts_with(|c: char| c.is_ascii_uppercase())
        && project
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !project_ok || !is_digits(number) || !comment.is_none_or(is_digits) {
        return None;
    }
    let mut url = site_url.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["browse", issue]);
    url.set_query(None);
    url.set_fragment(None);
    if let Some(comment) = comment {
        url.query_pairs_mut()
            .append_pair("focusedCommentId", comment);
    }
    Some(url.into())
}

fn parse(t: &TargetKeys<'_, '_>) -> Option<Target> {
    let (key, d) = (t.key, t.d);
    let search_recheck_ms =
        t.in_range("search_recheck_ms", &d.search_recheck_ms, 2_000, 0..=60_000);
    let project = t.required("project", &d.project).filter(|project| {
        let valid = project
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            t.add(
                d.project.as_ref().map(|v| v.span()),
                format!(
                    "{key}.project: {project:?} is not a Jira project key; write it in capitals, like {:?}",
                    project.to_ascii_uppercase()
                ),
            );
        }
        valid
    });
    let site_url = t.required_url();
    let issue_type = match &d.issue_type {
        None => Some("Task".to_owned()),
        Some(_) => t.required("issue_type", &d.issue_type),
    };
    let email = t.required("email", &d.email);
    let token = t
        .secret_text("the API token")
        .map(|(value, _, _)| Secret::new(value));
    let resolve_transition = match &d.resolve_transition {
        None => Some("Done".to_owned()),
        Some(_) => t.required("resolve_transition", &d.resolve_transition),
    };
    Some(Target::Jira {
        site_url: site_url?,
        project: project?,
        issue_type: issue_type?,
        email: email?,
        token: token?,
        resolve_transition: resolve_transition?,
        search_recheck_ms,
        rendering: Default::default(),
    })
}
