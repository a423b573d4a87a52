//! herald: durable fan-out of incident messages to many destinations.
//! See ARCHITECTURE.md for the map of this crate.
#![forbid(unsafe_code)]

pub mod api;
pub mod bench;
pub mod client;
pub mod clock;
pub mod config;
pub mod connections;
pub mod connector;
pub mod demo;
pub mod demo_escalation;
pub mod dispatch;
pub mod domain;
pub mod events;
pub mod kinds;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod preview;
pub mod redact;
pub mod routing;
pub mod server;
pub mod store;
pub mod template;
pub mod tls;
