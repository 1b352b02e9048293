//! Palisade's sidecar proxy.
//!
//! - [`identity`]: obtaining, renewing and hot-swapping the workload certificate.
//! - [`control_plane_client`]: the identity protocol, client side.
//! - [`admin`]: `/live`, `/ready`, `/metrics`.
//! - [`sidecar`]: how the pieces are assembled.

pub mod admin;
pub mod config;
pub mod control_plane_client;
pub mod identity;
pub mod sidecar;

pub use config::Config;
pub use sidecar::{RunningSidecar, start};
