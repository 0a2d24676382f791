//! Tapestry control plane: a Cloud Foundry-compatible policy server (policies, tags), Silk-style
//! subnet leases, ASGs, internal routes, and a versioned change feed that cells long-poll.
//!
//! Run one in-process with [`start`]; cells talk to it with [`client::InternalClient`] and keep
//! a local replica in [`feed::View`].
pub mod api;
pub mod cc;
pub mod certs;
pub mod cf;
pub mod client;
pub mod error;
pub mod feed;
pub mod identity;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod uaa;
pub mod validate;

pub use listen::Limits;
pub use server::{
    create_token, issue_cell_credentials, open_store, start, ControlConfig, RunningControl,
};

pub use error::{ClientError, ControlError, StoreError};

/// Scope that may do everything.
pub const SCOPE_ADMIN: &str = "network.admin";
/// Scope limited to apps of the token's spaces.
pub const SCOPE_WRITE: &str = "network.write";
