//! Benchmarks: the closed-loop load generator behind `bully-bench`, and `bully-bench report`,
//! which measures bully (both stores) and etcd side by side in one run and writes
//! `docs/benchmarks.md`.
//!
//! # Layout
//! - [`load`]: the generator, generic over a [`load::Target`]; throughput, latency, stalls.
//! - [`bully`], [`etcd`]: the two systems as targets, with their clusters.
//! - [`failover`], [`election`], [`oneshot`]: the measurements beyond throughput.
//! - [`report`]: runs every section; [`targets`] checks issue 17's targets; [`markdown`] and
//!   [`plot`] write the report; [`host`] reads the machine and its processes.

pub mod bully;
pub mod election;
pub mod etcd;
pub mod failover;
pub mod host;
pub mod load;
pub mod markdown;
pub mod oneshot;
pub mod plot;
pub mod report;
pub mod targets;
