//! The kinds of document the mesh knows, and the names they go by: the `kind` field, and
//! the resource name in the admin API's URLs and the CLI.

use std::fmt;
use std::str::FromStr;

pub const API_VERSION: &str = "palisade.dev/v1";

/// The kinds of document the mesh knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    AuthorizationPolicy,
    RequestAuthentication,
    Service,
}

impl Kind {
    /// Every kind, in the order they are listed.
    pub const ALL: [Kind; 3] = [
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Service,
    ];

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Service => "Service",
        }
    }

    /// The resource name of the kind in the admin API and the CLI (Kubernetes' plural,
    /// lower-case: `authorizationpolicies`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::AuthorizationPolicy => "authorizationpolicies",
            Kind::RequestAuthentication => "requestauthentications",
            Kind::Service => "services",
        }
    }

    /// The kind a resource name stands for.
    pub fn from_resource(resource: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.resource() == resource)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a kind of document the mesh knows"))
    }
}
