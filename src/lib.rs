//! gbuild: a rootless builder of Gentoo binary packages whose configuration mirrors a host exactly.
//!
//! The library holds every mechanism (store, runtime, fetch, layers); the binary (`src/main.rs`,
//! `src/cli.rs`, `src/cmd/`) only parses the command line and reports errors. See ARCHITECTURE.md.

#![deny(unsafe_code)]

pub mod abi;
pub mod beneath;
pub mod builder;
pub mod compress;
pub mod config;
pub mod fetch;
pub mod fsutil;
pub mod gc;
pub mod host;
pub mod idmap;
pub mod layer;
pub mod lock;
pub mod progress;
pub mod runtime;
pub mod serve;
pub mod setup_host;
pub mod sign;
pub mod stage3;
pub mod store;
#[allow(unsafe_code)]
pub mod sys;
pub mod term;
#[cfg(test)]
mod tidy;
pub mod time;
pub mod userns;
