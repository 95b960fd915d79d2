//! The Kafka wire protocol: a listener (server) that lets Kafka clients
//! produce to and consume from millrace, and a small client for the CLI's
//! `--brokers` mode.
//!
//! - [`server`]: connections, frames, limits, response ordering.
//! - [`handlers`]: what each API means to the actors.
//! - [`versions`]: the API versions served (what ApiVersions advertises).
//!
//! Messages are encoded and decoded by the `kafka-protocol` crate (vendored
//! with a bound on decoded array lengths: vendor/kafka-protocol/PATCHED.md);
//! the semantics are ours.

pub mod client;
pub(crate) mod handlers;
pub(crate) mod server;
pub mod versions;

pub use handlers::KafkaCounters;
