//! herald's integration tests: one binary, real HTTP, real database files,
//! real processes.

mod bad_input;
mod bench;
mod cli;
mod cli_safety;
mod connectors;
mod console;
mod crash;
mod discord_bot;
mod email;
mod first_hour;
mod google_chat;
mod ingest_and_statuses;
mod isolation;
mod layering;
mod logging;
mod matrix;
mod mock_answers;
mod multinode;
mod new_kinds;
mod objectives;
mod operator;
mod partial_failure;
mod pause;
mod pg_tls;
mod reload;
mod retention;
mod routing;
mod secrets;
mod serving;
mod specs;
mod store;
mod support;
mod templates;
mod tls;
