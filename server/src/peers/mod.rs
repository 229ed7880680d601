//! Finding peers and talking to them.
//!
//! # Layout
//! - [`discovery`]: a static list, or every address DNS returns for a headless Service, re-resolved
//!   periodically so restarted or new servers are found.
//! - [`transport`]: fire-and-forget delivery of election messages over HTTP, one queue per peer
//!   so a dead peer cannot delay messages to live ones.

pub mod discovery;
pub mod transport;
