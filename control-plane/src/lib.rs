//! Palisade's control plane.
//!
//! - [`ca`]: the certificate authority and the trust bundle (with root rotation).
//! - [`tokens`] and [`bootstrap`]: the JWTs it signs and the bootstrap tokens it accepts;
//!   [`k8s_discovery`] fetches a cluster's token keys.
//! - [`issuance`]: who gets which certificate; [`own_identity`]: the control plane's own.
//! - [`join_tokens`]: creating single-use join tokens.
//! - [`store`]: persistent state (SQLite or PostgreSQL).
//! - [`sidecar_api`]: the TLS listener sidecars talk to; [`serving`]: serving (TLS or
//!   plain) and the JSON error body, shared by every listener; [`metrics`]: counters and
//!   `/metrics`.
//! - [`mesh_config`]: the stored mesh configuration and the sidecars following it.
//! - [`admin`]: the authenticated administration API, one file per resource.
//! - [`webhook`]: the sidecar injector's admission webhook.
//! - [`kubernetes`]: what the control plane publishes in a cluster (trust-bundle
//!   ConfigMaps, the webhook's caBundle, the CA Secret).
//! - [`server`]: how the pieces are assembled and served.

pub mod admin;
pub mod admin_tokens;
pub mod admin_trail;
pub mod bootstrap;
pub mod ca;
pub mod collector;
pub mod config;
pub mod issuance;
pub mod join_tokens;
pub mod k8s_discovery;
pub mod keys;
pub mod keys_cli;
pub mod kubernetes;
pub mod mesh_config;
pub mod metrics;
pub mod own_decisions;
pub mod own_identity;
pub mod retention;
pub mod server;
pub mod serving;
pub mod sidecar_api;
pub mod store;
pub mod tokens;
pub mod webhook;

pub use config::Config;
pub use server::{RunningControlPlane, start};
