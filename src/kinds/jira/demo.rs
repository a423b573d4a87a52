//! Jira in `herald demo`: a project at the mock that fails the first
//! creates.

use crate::config::{Secret, Target};
use crate::demo::{mock_jira_project, mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "jira",
        send_path: |_| "/jira/rest/api/3/issue".to_owned(),
        target: |mock_base, name| Target::Jira {
            site_url: mock_url(mock_base, "/jira/"),
            project: mock_jira_project(name),
            issue_type: "Incident".into(),
            email: "herald@example.com".into(),
            token: Secret::new("jira-mock-token"),
            resolve_transition: "Done".into(),
            search_recheck_ms: 500,
            rendering: Default::default(),
        },
        name: "jira-ops",
        what: "fails the first three creates (503); the update and resolve wait",
        faults: Faults {
            fail_first: 3,
            fail_status: 503,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let p = stats
        .jira
        .projects
        .get(&mock_jira_project(name))
        .cloned()
        .unwrap_or_default();
    let issue = p.comments.keys().next().cloned().unwrap_or_default();
    let status = p.statuses.get(&issue).cloned().unwrap_or_default();
    let comments = p.comments.get(&issue).copied().unwrap_or(0);
    (
        format!(
            "{} issue ({issue}) with {comments} comments, status {status}",
            p.issues
        ),
        p.issues == 1 && comments == 2 && status == "Done",
    )
}
