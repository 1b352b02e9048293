//! Palisade's sidecar proxy.
//!
//! - [`identity`]: obtaining, renewing and hot-swapping the workload certificate.
//! - [`control_plane_client`]: the identity and configuration protocols, client side.
//! - [`config_watch`]: following the mesh configuration, with a last-good cache.
//! - [`inbound`]: mTLS in, authorize, forward to the application (HTTP, and opaque TCP ports
//!   authorized on identity and port).
//! - [`outbound`]: from the application to other services, over pooled mTLS, with secure
//!   naming (HTTP, intercepted passthrough, and `--tcp-outbound` ports).
//! - [`policies`]: what this workload enforces, swapped whole; [`net`]: dialling and piping.
//! - [`config`]: the flags, validated once into typed settings for each component;
//!   [`runtime`]: what every path shares (identity, policies, registry, log, metrics).
//! - [`amqp`]: the AMQP 0-9-1 proxy: credential injection, authorization of every operation,
//!   field tables read as RabbitMQ reads them, publisher provenance.
//! - [`transparent`]: the original destination of a connection iptables redirected.
//! - [`server`]: HTTP limits and idle connections, for both listeners.
//! - [`audit`]: one record per decision, to the durable spool ([`decision_log`]) and the
//!   line stream; [`metrics`]: data-plane counters.
//! - [`admin`]: `/live`, `/ready`, `/metrics`.
//! - [`sidecar`]: how the pieces are assembled.

pub mod admin;
pub mod amqp;
pub mod audit;
pub mod config;
pub mod config_watch;
pub mod control_plane_client;
pub mod decision_log;
pub mod forwarding;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod policies;
pub mod runtime;
pub mod server;
pub mod sidecar;
pub mod transparent;
pub mod trust;

pub use config::{Config, Settings};
pub use sidecar::{RunningSidecar, start, start_with};
