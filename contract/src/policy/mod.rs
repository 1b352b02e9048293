//! Authorization policy: the model both the sidecar (which enforces it) and the control
//! plane (which stores, validates and simulates it) use, so they can never disagree.
//!
//! - [`document`]: parsing and validating `AuthorizationPolicy` documents.
//! - [`evaluate`]: the compiled, indexed policy set and its decisions.
//! - [`index`]: which documents apply to which workload.

pub mod document;
pub mod evaluate;
pub mod index;

pub use document::{Action, AuthorizationPolicy, Problem, Problems, parse_documents};
pub use evaluate::{
    Basis, Decision, DefaultMode, PolicyRef, PolicySet, Request, Verdict, Workload,
};
