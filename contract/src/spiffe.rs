//! SPIFFE IDs: the one parser every identity passes through.
//!
//! A SPIFFE ID names a workload (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>` in Palisade).
//! Identities enter the system from certificates, tokens, policies and flags; each of them is
//! parsed here, so the rules of the SPIFFE ID specification are enforced in one place:
//! lower-case scheme and trust domain, path segments of `[A-Za-z0-9._-]` only, no empty, `.`
//! or `..` segment, no trailing slash, no query, fragment, port, user info or
//! percent-encoding, and at most 2048 bytes (the trust domain at most 255).

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID specification, section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID, trust domain or Kubernetes name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("is empty")]
    Empty,
    #[error("does not start with \"spiffe://\" (the scheme must be lower-case)")]
    WrongScheme,
    #[error("has no trust domain")]
    MissingTrustDomain,
    #[error("is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("has a trust domain longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain has the character {0:?}; only a-z, 0-9, '.', '-' and '_' are allowed")]
    BadTrustDomainChar(char),
    #[error("has an empty path segment")]
    EmptySegment,
    #[error("has a '.' or '..' path segment")]
    DotSegment,
    #[error("has a trailing '/'")]
    TrailingSlash,
    #[error("path has the character {0:?}; only A-Z, a-z, 0-9, '.', '-' and '_' are allowed")]
    BadPathChar(char),
    #[error("is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    NotAWorkloadId,
    #[error("{what} {value:?} is not a valid Kubernetes name ({rule})")]
    BadKubernetesName {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
}

/// A trust domain name, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(SpiffeIdError::BadTrustDomainChar(c));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of a Kubernetes-style workload in this trust domain.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        validate_namespace(namespace)?;
        validate_service_account(service_account)?;
        SpiffeId::parse(&format!(
            "{SCHEME}{}/ns/{namespace}/sa/{service_account}",
            self.0
        ))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A SPIFFE ID, validated. Cheap to clone and compare; displays as its URI.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte offset where the path starts (`uri.len()` when there is none).
    path_start: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        // A port, user info, query or fragment all show up as a forbidden character in the
        // trust domain (':', '@', '?', '#'), and '%' is never allowed anywhere.
        TrustDomain::parse(td)?;
        if !path.is_empty() {
            let segments = &path[1..];
            if segments.is_empty() {
                return Err(SpiffeIdError::TrailingSlash);
            }
            for (i, segment) in segments.split('/').enumerate() {
                if segment.is_empty() {
                    let last = i == segments.split('/').count() - 1;
                    return Err(if last {
                        SpiffeIdError::TrailingSlash
                    } else {
                        SpiffeIdError::EmptySegment
                    });
                }
                if segment == "." || segment == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::BadPathChar(c));
                }
            }
        }
        Ok(Self {
            uri: s.to_owned(),
            path_start: SCHEME.len() + td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.uri
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The path, with its leading '/', or "" for a trust-domain ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// `(namespace, service account)` when the ID has Palisade's workload form.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        self.namespace_and_service_account().map(|(ns, _)| ns)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("SPIFFE ID {s:?} {e}")))
    }
}

/// A Kubernetes namespace name: a DNS-1123 label.
pub fn validate_namespace(ns: &str) -> Result<(), SpiffeIdError> {
    if is_dns_label(ns) {
        Ok(())
    } else {
        Err(SpiffeIdError::BadKubernetesName {
            what: "namespace",
            value: ns.to_owned(),
            rule: "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit",
        })
    }
}

/// A Kubernetes service account name: a DNS-1123 subdomain.
pub fn validate_service_account(sa: &str) -> Result<(), SpiffeIdError> {
    if !sa.is_empty() && sa.len() <= 253 && sa.split('.').all(is_dns_label) {
        Ok(())
    } else {
        Err(SpiffeIdError::BadKubernetesName {
            what: "service account",
            value: sa.to_owned(),
            rule: "1-253 characters: dot-separated labels of a-z, 0-9 and '-'",
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "spiffe://palisade.local/ns/shop/sa/orders",
            "spiffe://example.org",
            "spiffe://a_b-c.d/Path.With-Mixed_Case/9",
            "spiffe://td/ns/x/sa/y.z",
        ] {
            let id = SpiffeId::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
        }
    }

    #[test]
    fn splits_into_parts() {
        let id = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/orders").unwrap();
        assert_eq!(id.trust_domain_str(), "palisade.local");
        assert_eq!(id.path(), "/ns/shop/sa/orders");
        assert_eq!(id.namespace_and_service_account(), Some(("shop", "orders")));
        let other = SpiffeId::parse("spiffe://palisade.local/ns/shop/sa/orders/extra").unwrap();
        assert_eq!(other.namespace_and_service_account(), None);
        let bare = SpiffeId::parse("spiffe://palisade.local").unwrap();
        assert_eq!(bare.path(), "");
        assert_eq!(bare.namespace(), None);
    }

    #[test]
    fn rejects_malformed_ids_with_the_right_reason() {
        use SpiffeIdError::*;
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        let long_td = format!("spiffe://{}/x", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", Empty),
            ("SPIFFE://td/x", WrongScheme),
            ("https://td/x", WrongScheme),
            ("spiffe:/td/x", WrongScheme),
            ("spiffe:///x", MissingTrustDomain),
            ("spiffe://Palisade.local/x", BadTrustDomainChar('P')),
            ("spiffe://td:8443/x", BadTrustDomainChar(':')),
            ("spiffe://user@td/x", BadTrustDomainChar('@')),
            ("spiffe://td?q=1", BadTrustDomainChar('?')),
            ("spiffe://td#frag", BadTrustDomainChar('#')),
            ("spiffe://td/", TrailingSlash),
            ("spiffe://td/ns/", TrailingSlash),
            ("spiffe://td//x", EmptySegment),
            ("spiffe://td/ns//sa/x", EmptySegment),
            ("spiffe://td/./x", DotSegment),
            ("spiffe://td/ns/../sa", DotSegment),
            ("spiffe://td/ns/%61", BadPathChar('%')),
            ("spiffe://td/x?query", BadPathChar('?')),
            ("spiffe://td/x#frag", BadPathChar('#')),
            ("spiffe://td/ns/a b", BadPathChar(' ')),
            ("spiffe://td/ns/é", BadPathChar('é')),
            (long_path.as_str(), TooLong),
            (long_td.as_str(), TrustDomainTooLong),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn workload_ids_need_kubernetes_names() {
        let td = TrustDomain::parse("palisade.local").unwrap();
        assert_eq!(
            td.workload_id("shop", "orders").unwrap().as_str(),
            "spiffe://palisade.local/ns/shop/sa/orders"
        );
        assert!(td.workload_id("Shop", "orders").is_err());
        assert!(td.workload_id("shop", "").is_err());
        assert!(td.workload_id("-shop", "orders").is_err());
        assert!(td.workload_id("shop", "a..b").is_err());
        assert!(td.workload_id(&"a".repeat(64), "orders").is_err());
        assert!(td.workload_id("shop", "orders.v2").is_ok());
    }

    #[test]
    fn serde_round_trip_validates() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://td/ns/a/sa/b\""
        );
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/../x\"").unwrap_err();
        assert!(err.to_string().contains("'.' or '..'"), "{err}");
    }
}
