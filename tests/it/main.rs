//! The one integration-test binary. Each module covers one area and drives the real `gbuild`
//! binary; `util` holds what they share. Tests that need user namespaces skip with a notice on a
//! machine without them, and fail instead when `GBUILD_MUST_WORK=1` (CI).

mod builder;
mod cli;
mod exec;
mod fetch;
mod generations;
mod helpers;
mod host;
mod layer;
mod mirror;
mod realhost;
mod rebase;
mod serve;
mod signing;
mod util;
