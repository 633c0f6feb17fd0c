//! Networking for repoSpanner: TLS (rustls, ring), the HTTPS server and client, the git
//! smart-HTTP protocol (upload-pack, receive-pack), the admin API, and routing a
//! request to the shard that owns its repository.
//!
//! Status: not implemented yet (issue "A node serves real git over HTTPS"). Only
//! depends on `ca`, for the identity of a verified peer.
