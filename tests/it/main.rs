//! herald's integration tests: one binary, real HTTP, real database files,
//! real processes.

mod bad_input;
mod cli;
mod connectors;
mod crash;
mod ingest_and_statuses;
mod isolation;
mod multinode;
mod operator;
mod partial_failure;
mod retention;
mod specs;
mod store;
mod support;
