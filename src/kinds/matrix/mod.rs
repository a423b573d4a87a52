//! Matrix: a room through the client-server API with a user's access
//! token. Messages are sent with a txnId derived from the delivery's key,
//! so the homeserver itself makes a re-send idempotent; threads are
//! `m.thread` relations to the first event, a resolve an `m.replace` edit of
//! it plus a message in the thread.
//!
//! - [`connector`]: requests, classification, send, verify.
//! - [`mock`]: the client-server emulation for `herald mock`.

pub mod config;
pub mod connector;
pub mod demo;
pub mod mock;

use std::time::Duration;

use axum::response::Response;

use crate::config::Target;
use crate::mock::{Admission, Emulation, Incoming, PathStats};

impl connector::MatrixConnector {
    /// The connector of a Matrix target; `None` for another kind's.
    pub fn from_target(
        target: &Target,
        timeout: Duration,
        connections_max: usize,
    ) -> Option<reqwest::Result<connector::MatrixConnector>> {
        let Target::Matrix {
            homeserver_url,
            room_id,
            token,
            rendering,
        } = target
        else {
            return None;
        };
        Some(connector::MatrixConnector::new(
            homeserver_url.clone(),
            room_id.clone(),
            token.clone(),
            rendering.clone(),
            timeout,
            connections_max,
        ))
    }
}

impl Emulation for mock::Matrix {
    type Stats = mock::MatrixStats;

    fn serves(path: &str) -> bool {
        path.starts_with(mock::PREFIX)
    }

    fn answer(
        &mut self,
        incoming: &Incoming,
        admission: &Admission,
        _: &mut PathStats,
    ) -> Response {
        self.handle(incoming, admission)
    }

    fn counted(&self) -> mock::MatrixStats {
        self.stats()
    }
}
