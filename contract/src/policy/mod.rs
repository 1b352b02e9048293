//! Authorization policy: the model both the sidecar (which enforces it) and the control
//! plane (which stores, validates and simulates it) use, so they can never disagree.
//!
//! - [`document`]: parsing and validating `AuthorizationPolicy` documents.

pub mod document;

pub use document::{Action, AuthorizationPolicy, Problem, Problems, parse_documents};
