//! herald: durable fan-out of incident messages to many destinations.
//! See ARCHITECTURE.md for the map of this crate.
#![forbid(unsafe_code)]

pub mod domain;
pub mod store;
