//! The `repospanner` package: wires the workspace crates into the commands the
//! binary exposes. `main.rs` only parses the command line; what each command does
//! lives here ([`commands`]), and the configuration file is read and validated in
//! [`config`].

pub mod admin;
pub mod aside;
pub mod bridge;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod import;
pub mod node;
pub mod quickstart;
pub mod serve;
pub mod stop;
pub mod systemd;
pub mod upkeep;

/// The version reported by `repospanner version` and in the git agent string.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
