//! Networking for repoSpanner: TLS (rustls, ring), the HTTPS server, the git smart-HTTP
//! protocol (upload-pack, receive-pack) and the admin API.
//!
//! Depends only on `ca`, for the identity of a verified peer, and on `object`, git's
//! object model (shared with the storage engine). Repository data is
//! reached through the [`backend::Backend`] trait, which the root package implements
//! over the storage engine; the git protocol logic in [`git`] is pure.

pub mod backend;
pub mod client;
pub mod contain;
pub mod gate;
pub mod git;
pub mod hooks;
pub mod http;
pub mod metrics;
pub mod piece;
pub mod route;
pub mod rpc;
pub mod service;
pub mod spool;
pub mod tls;
