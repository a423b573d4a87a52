//! Connectors turn a claimed delivery into a request and a response into an
//! [`Outcome`]. They never touch the store; each decides its outcome classes
//! in one function.

pub(crate) mod http;
pub mod shared;

use std::time::Duration;

use crate::config::Destination;
use crate::domain::{ClaimedDelivery, Outcome};

pub use shared::{headline, http_client_builder, parse_retry_after_ms, Role, VerifyReport};

// Each kind's requests and classification, where callers and tests have
// always found them.
pub use crate::kinds::discord::bot_connector::{
    discord_create_message_body, discord_nonce, DiscordBotConnector,
};
pub use crate::kinds::discord::connector::{
    classify_discord_response, discord_execute_body, DiscordConnector,
};
pub use crate::kinds::jira::connector::{
    adf_document, classify_jira_response, jira_comment_body, jira_create_body, jira_label,
    JiraConnector,
};
pub use crate::kinds::matrix::connector::{
    classify_matrix_response, matrix_edit_txn_id, matrix_message_content,
    matrix_resolve_edit_content, matrix_send_url, matrix_txn_id, MatrixConnector,
};
pub use crate::kinds::pagerduty::connector::{
    classify_pagerduty_response, pagerduty_event, PagerDutyConnector,
};
pub use crate::kinds::slack::connector::{
    classify_slack_response, post_message_body, resolve_update_body, SlackConnector,
};
pub use crate::kinds::teams::connector::{
    classify_teams_response, teams_card_message, TeamsConnector,
};
pub use crate::kinds::webhook::connector::{
    classify_webhook_response, sign_webhook, webhook_payload, WebhookConnector,
};

/// Generates [`Connector`] from the list of kinds: one variant per kind,
/// and a `match` per call, so a delivery's send is an enum dispatch (no box,
/// no allocation).
macro_rules! connector_enum {
    ($($variant:ident {
        field: $field:ident,
        connector: $($connector:ident)::+,
        emulation: $($emulation:ident)::+,
        stats: $($stats:ident)::+,
        demo: $demo:ident,
        config: $config:ident $(,)?
    }),* $(,)?) => {
        /// One configured destination's connector.
        pub enum Connector {
            $($variant(crate::kinds::$($connector)::+),)*
        }

        impl Connector {
            pub fn new(destination: &Destination) -> Result<Connector, reqwest::Error> {
                let timeout = Duration::from_millis(destination.timeout_ms);
                let connections = destination.concurrency as usize;
                $(
                    if let Some(connector) = crate::kinds::$($connector)::+::from_target(
                        &destination.target,
                        timeout,
                        connections,
                    ) {
                        return Ok(Connector::$variant(connector?));
                    }
                )*
                unreachable!("every target variant is a kind of the list")
            }

            pub async fn send(&self, delivery: &ClaimedDelivery, now_ms: i64) -> Outcome {
                match self {
                    $(Connector::$variant(c) => c.send(delivery, now_ms).await,)*
                }
            }

            pub async fn verify(&self, delivery: &ClaimedDelivery) -> VerifyReport {
                match self {
                    $(Connector::$variant(c) => c.verify(delivery).await,)*
                }
            }
        }
    };
}

crate::kinds::with_kinds!(connector_enum);
