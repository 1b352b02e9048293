//! Authorization policy: the model both the sidecar (which enforces it) and the control
//! plane (which stores, validates and simulates it) use, so they can never disagree.
//!
//! - [`authorization`]: the `AuthorizationPolicy` document (read by [`crate::documents`]).
//! - [`amqp`]: the AMQP target of a rule and topic matching.
//! - [`authentication`]: `RequestAuthentication` documents and end-user JWTs.
//! - [`evaluate`]: the compiled, indexed policy set and its decisions.
//! - [`index`]: which documents apply to which workload.

pub mod amqp;
pub mod authentication;
pub mod authorization;
pub mod evaluate;
pub mod index;

pub use amqp::AmqpRequest;
pub use authentication::{Authenticator, EndUser, RequestAuthentication};
pub use authorization::{Action, AuthorizationPolicy};
pub use evaluate::{
    Basis, Decision, DefaultMode, Explanation, PolicyRef, PolicySet, Request, RuleExplanation,
    Verdict, Workload,
};
