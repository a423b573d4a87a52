//! Matrix in `herald demo`: a room at the mock whose first send's answer is
//! dropped; the re-send carries the same txnId, so the room holds one event.

use crate::config::{Secret, Target};
use crate::demo::{mock_url, DemoKind};
use crate::mock::{Faults, MockStats};

/// The room of a mock Matrix destination named `name`.
pub fn mock_room_id(name: &str) -> String {
    format!("!{name}:{}", super::mock::SERVER_NAME)
}

/// Every send into the room (each txnId is its own path): a prefix.
fn send_path(name: &str) -> String {
    format!("{}{}/send/*", super::mock::ROOMS, mock_room_id(name))
}

pub fn demo_kind() -> DemoKind {
    DemoKind {
        kind: "matrix",
        send_path,
        target: |mock_base, name| Target::Matrix {
            homeserver_url: mock_url(mock_base, "/matrix/"),
            room_id: mock_room_id(name),
            token: Secret::new("herald-mock-matrix-token"),
            rendering: crate::template::Rendering::default(),
        },
        name: "matrix-ops",
        what:
            "takes the first event, then drops the answer: re-sent with the same txnId, not doubled",
        faults: Faults {
            drop_first: 1,
            drop_hang_ms: 10_000,
            ..Faults::default()
        },
        landed,
    }
}

fn landed(stats: &MockStats, name: &str) -> (String, bool) {
    let r = stats
        .matrix
        .rooms
        .get(&mock_room_id(name))
        .cloned()
        .unwrap_or_default();
    (
        format!(
            "{} message, {} in its thread, {} edit (marked resolved), {} txnId replays, {} bodies duplicated",
            r.messages, r.thread_events, r.edits, r.txn_replays, r.duplicated_bodies
        ),
        r.messages == 1
            && r.thread_events == 2
            && r.edits == 1
            && r.ignored_edits == 0
            && r.duplicated_bodies == 0
            && r.duplicated_txn_ids.is_empty(),
    )
}
