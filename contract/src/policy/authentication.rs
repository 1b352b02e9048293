//! End-user authentication: `RequestAuthentication` documents and the authenticator built
//! from them (as Istio's).
//!
//! ```yaml
//! apiVersion: palisade.dev/v1
//! kind: RequestAuthentication
//! metadata: { name: shop-users, namespace: shop }
//! spec:
//!   selector: { service: payments }          # omitted: the whole namespace
//!   jwtRules:
//!     - issuer: "https://idp.example"
//!       audiences: ["shop"]
//!       jwks: '{"keys": [...]}'              # inline, or jwksFile: /etc/palisade/idp.jwks
//!       fromHeaders: [ { name: authorization, prefix: "Bearer " } ]   # the default
//!       forwardOriginalToken: false          # the default: the token is not forwarded
//! ```
//!
//! A request without a token is let through unauthenticated (authorization policies decide,
//! e.g. with `requestPrincipals: ["*"]`). A token that is present but not valid, or from an
//! issuer no rule names, is refused with 401. A valid token gives the request principal
//! `iss/sub` and its claims to authorization. Verification is [`crate::jwt`]'s: strict, with
//! symmetric JWKS keys ignored and unknown `kid`s refused.

use std::path::PathBuf;

use http::{HeaderMap, HeaderName};
use serde::Serialize;
use serde_json::{Map, Value};

use super::index::{Workload, WorkloadIndex};
use crate::documents::kind::Kind;
use crate::documents::walk::{Envelope, Problem, Problems, Walk, join};
use crate::jwt::{Jwks, TokenError, unverified_issuer};

/// An inline JWKS may be this large (a few dozen RSA keys).
pub const MAX_JWKS_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAuthentication {
    pub name: String,
    pub namespace: String,
    /// The service whose requests it authenticates; `None`: every workload of the namespace.
    pub service: Option<String>,
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Where the token is looked for, in order; `Authorization: Bearer` when empty.
    pub from_headers: Vec<FromHeader>,
    /// Forward the token to the application (by default the header is removed).
    pub forward_original_token: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JwksSource {
    /// The JWKS JSON itself.
    Inline(String),
    /// A file holding it, read when the policies are loaded.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FromHeader {
    pub name: String,
    pub prefix: String,
}

impl Walk<'_> {
    /// One `RequestAuthentication` document; `None` when a problem was reported.
    pub(crate) fn request_authentication(
        &mut self,
        v: &Value,
        root: &str,
    ) -> Option<RequestAuthentication> {
        let before = self.problems.len();
        let Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        } = self.envelope(
            v,
            root,
            Kind::RequestAuthentication,
            &["selector", "jwtRules"],
        )?;
        let service = self.selector(spec, &spec_loc).ok()?;
        let jwt_rules = self.rules(spec, &spec_loc, "jwtRules", Self::jwt_rule);
        if jwt_rules.is_empty() && self.problems.len() == before {
            self.problem(&join(&spec_loc, "jwtRules"), "must have at least one rule");
        }
        if self.problems.len() > before {
            return None;
        }
        Some(RequestAuthentication {
            name: name?,
            namespace: namespace?,
            service,
            jwt_rules,
        })
    }

    fn jwt_rule(&mut self, v: &Value, loc: &str) -> Option<JwtRule> {
        let map = self.object(
            v,
            loc,
            &[
                "issuer",
                "audiences",
                "jwks",
                "jwksFile",
                "fromHeaders",
                "forwardOriginalToken",
            ],
        )?;
        let before = self.problems.len();
        let issuer_loc = join(loc, "issuer");
        let issuer = match map.get("issuer") {
            None => {
                self.problem(&issuer_loc, "is required");
                None
            }
            Some(v) => match self.string(v, &issuer_loc) {
                Some("") => {
                    self.problem(&issuer_loc, "must not be empty");
                    None
                }
                other => other.map(str::to_owned),
            },
        };
        let audiences = self.strings(map, loc, "audiences", |s| {
            if s.is_empty() {
                Err("is empty".into())
            } else {
                Ok(())
            }
        });
        if audiences.is_empty()
            && map
                .get("audiences")
                .is_none_or(|a| a.as_array().is_some_and(Vec::is_empty))
        {
            self.problem(
                &join(loc, "audiences"),
                "must name at least one audience (tokens without a matching aud are refused)",
            );
        }
        let jwks = self.jwks(map, loc);
        let headers_loc = join(loc, "fromHeaders");
        let mut from_headers = Vec::new();
        for (i, h) in self
            .list(map.get("fromHeaders"), &headers_loc)
            .iter()
            .enumerate()
        {
            let h_loc = format!("{headers_loc}[{i}]");
            let Some(h) = self.object(h, &h_loc, &["name", "prefix"]) else {
                continue;
            };
            let name_loc = join(&h_loc, "name");
            let name = match h.get("name") {
                None => {
                    self.problem(&name_loc, "is required");
                    continue;
                }
                Some(n) => self.string(n, &name_loc),
            };
            let prefix = match h.get("prefix") {
                None => Some(""),
                Some(p) => self.string(p, &join(&h_loc, "prefix")),
            };
            if let (Some(name), Some(prefix)) = (name, prefix) {
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.problem(&name_loc, format!("{name:?} is not a header name"));
                    continue;
                }
                from_headers.push(FromHeader {
                    name: name.to_ascii_lowercase(),
                    prefix: prefix.to_owned(),
                });
            }
        }
        let forward_original_token = match map.get("forwardOriginalToken") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problem(
                    &join(loc, "forwardOriginalToken"),
                    format!("must be true or false, not {other}"),
                );
                false
            }
        };
        if self.problems.len() > before {
            return None;
        }
        Some(JwtRule {
            issuer: issuer?,
            audiences,
            jwks: jwks?,
            from_headers,
            forward_original_token,
        })
    }

    /// Exactly one of `jwks` (a JSON string, as Istio writes it, or an object) and `jwksFile`.
    fn jwks(&mut self, map: &Map<String, Value>, loc: &str) -> Option<JwksSource> {
        match (map.get("jwks"), map.get("jwksFile")) {
            (Some(_), Some(_)) | (None, None) => {
                self.problem(loc, "give exactly one of jwks and jwksFile");
                None
            }
            (Some(inline), None) => {
                let jwks_loc = join(loc, "jwks");
                let text = match inline {
                    Value::String(s) => s.clone(),
                    Value::Object(_) => inline.to_string(),
                    other => {
                        self.problem(
                            &jwks_loc,
                            format!("must be a JWKS (a JSON string or an object), not {other}"),
                        );
                        return None;
                    }
                };
                if text.len() > MAX_JWKS_LEN {
                    self.problem(&jwks_loc, format!("is longer than {MAX_JWKS_LEN} bytes"));
                    return None;
                }
                match Jwks::from_json(text.as_bytes()) {
                    Ok(_) => Some(JwksSource::Inline(text)),
                    Err(e) => {
                        self.problem(&jwks_loc, e.to_string());
                        None
                    }
                }
            }
            (None, Some(file)) => {
                let file_loc = join(loc, "jwksFile");
                match self.string(file, &file_loc) {
                    Some(p) if p.starts_with('/') => Some(JwksSource::File(PathBuf::from(p))),
                    Some(p) => {
                        self.problem(&file_loc, format!("{p:?} must be an absolute path"));
                        None
                    }
                    None => None,
                }
            }
        }
    }
}

/// A verified end user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndUser {
    /// `iss/sub`.
    pub principal: String,
    pub claims: Value,
    /// The header the token came in, when it must not be forwarded.
    pub strip_header: Option<HeaderName>,
}

#[derive(Debug)]
struct CompiledRule {
    issuer: String,
    audiences: Vec<String>,
    keys: Jwks,
    headers: Vec<(HeaderName, String)>,
    forward: bool,
}

/// The compiled `RequestAuthentication` documents of the mesh.
#[derive(Debug, Default)]
pub struct Authenticator {
    index: WorkloadIndex<Vec<CompiledRule>>,
}

impl Authenticator {
    /// Compiles the documents, loading JWKS files (a file that cannot be read or holds no
    /// usable key is a problem, reported with the document it belongs to).
    pub fn new(docs: &[RequestAuthentication]) -> Result<Self, Problems> {
        let mut problems = Vec::new();
        let mut index = WorkloadIndex::default();
        for doc in docs {
            let mut rules = Vec::new();
            for (i, rule) in doc.jwt_rules.iter().enumerate() {
                let at = format!("{}/{}: spec.jwtRules[{i}]", doc.namespace, doc.name);
                let keys = match &rule.jwks {
                    JwksSource::Inline(text) => {
                        Jwks::from_json(text.as_bytes()).map_err(|e| format!("jwks: {e}"))
                    }
                    JwksSource::File(path) => std::fs::read(path)
                        .map_err(|e| e.to_string())
                        .and_then(|b| Jwks::from_json(&b).map_err(|e| e.to_string()))
                        .map_err(|e| format!("jwksFile {}: {e}", path.display())),
                };
                let keys = match keys {
                    Ok(k) => k,
                    Err(message) => {
                        problems.push(Problem {
                            location: at,
                            message,
                        });
                        continue;
                    }
                };
                let headers = if rule.from_headers.is_empty() {
                    vec![(http::header::AUTHORIZATION, "Bearer ".to_owned())]
                } else {
                    rule.from_headers
                        .iter()
                        .filter_map(|h| {
                            HeaderName::from_bytes(h.name.as_bytes())
                                .ok()
                                .map(|n| (n, h.prefix.clone()))
                        })
                        .collect()
                };
                rules.push(CompiledRule {
                    issuer: rule.issuer.clone(),
                    audiences: rule.audiences.clone(),
                    keys,
                    headers,
                    forward: rule.forward_original_token,
                });
            }
            index.insert(&doc.namespace, doc.service.as_deref(), rules);
        }
        if problems.is_empty() {
            Ok(Self { index })
        } else {
            Err(Problems(problems))
        }
    }

    /// The end user of a request to `workload`: `Ok(None)` when no token is presented (or no
    /// document applies), an error when a presented token is not acceptable.
    pub fn authenticate(
        &self,
        workload: &Workload<'_>,
        headers: &HeaderMap,
    ) -> Result<Option<EndUser>, TokenError> {
        let mut rules = self.index.candidates(workload).flatten().peekable();
        if rules.peek().is_none() {
            return Ok(None);
        }
        let rules: Vec<&CompiledRule> = rules.collect();
        // Every line of every header a rule reads is looked at, not just the first: a header
        // line with the rule's prefix carries a token; one without it (`Authorization:
        // Basic ...`) is not a token, as in Envoy. More than one token, however spread over
        // lines and headers, is refused: the one verified must be the only one the
        // application could read. A line that is not visible ASCII cannot be read the same
        // way by everyone, so it is refused too, never passed on as "no token".
        let mut token: Option<(HeaderName, String)> = None;
        let mut seen: Vec<&HeaderName> = Vec::new();
        for (name, prefix) in rules.iter().flat_map(|r| r.headers.iter()) {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            for line in headers.get_all(name) {
                let value = line.to_str().map_err(|_| TokenError::Malformed)?;
                let Some(found) = strip_prefix_ignore_case(value, prefix) else {
                    continue;
                };
                if token.is_some() {
                    return Err(TokenError::Ambiguous);
                }
                token = Some((name.clone(), found.trim().to_owned()));
            }
        }
        let Some((header, token)) = token else {
            return Ok(None);
        };
        let issuer = unverified_issuer(&token)?;
        let rule = rules
            .iter()
            .find(|r| r.issuer == issuer && r.headers.iter().any(|(n, _)| *n == header))
            .ok_or(TokenError::UnknownIssuer)?;
        let audiences: Vec<&str> = rule.audiences.iter().map(String::as_str).collect();
        let claims: Value = rule.keys.verify(&token, &rule.issuer, &audiences)?;
        // The principal is `iss/sub`: a token without a subject names nobody.
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TokenError::BadClaims)?;
        Ok(Some(EndUser {
            principal: format!("{}/{sub}", rule.issuer),
            claims,
            strip_header: (!rule.forward).then_some(header),
        }))
    }
}

impl Authenticator {
    /// The headers end-user tokens are read from for `workload` (so that no other spelling
    /// of them reaches the application).
    pub fn token_headers(&self, workload: &Workload<'_>) -> Vec<HeaderName> {
        let mut names: Vec<HeaderName> = Vec::new();
        for (name, _) in self
            .index
            .candidates(workload)
            .flatten()
            .flat_map(|r| r.headers.iter())
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// `value` without `prefix`, compared case-insensitively (auth schemes are, RFC 9110 11.1).
fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use serde_json::json;

    use super::*;
    use crate::documents::parse_documents;
    use crate::jwt::testing::{TestIssuer, now};

    const ISS: &str = "https://idp.example";

    fn doc(issuer: &TestIssuer, extra: &str) -> String {
        format!(
            r#"
apiVersion: palisade.dev/v1
kind: RequestAuthentication
metadata: {{ name: shop-users, namespace: shop }}
spec:
  selector: {{ service: payments }}
  jwtRules:
    - issuer: "{ISS}"
      audiences: ["shop"]
      jwks: '{}'
{extra}"#,
            issuer.jwks
        )
    }

    fn authenticator(text: &str) -> Authenticator {
        Authenticator::new(&parse_documents(text).unwrap().authentication).unwrap()
    }

    const PAYMENTS: Workload<'static> = Workload {
        namespace: "shop",
        service: "payments",
    };

    fn claims() -> Value {
        let t = now();
        json!({"iss": ISS, "sub": "alice", "aud": "shop", "exp": t + 300, "nbf": t, "tenant": "acme"})
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn parses_inline_string_and_object_jwks_and_files() {
        let issuer = TestIssuer::new("k1");
        let docs = parse_documents(&doc(&issuer, "")).unwrap();
        let ra = &docs.authentication[0];
        assert_eq!(ra.service.as_deref(), Some("payments"));
        assert_eq!(ra.jwt_rules[0].issuer, ISS);
        assert!(matches!(ra.jwt_rules[0].jwks, JwksSource::Inline(_)));
        assert!(docs.authorization.is_empty());

        let object = format!(
            r#"{{"apiVersion": "palisade.dev/v1", "kind": "RequestAuthentication",
                "metadata": {{"name": "a", "namespace": "shop"}},
                "spec": {{"jwtRules": [{{"issuer": "{ISS}", "audiences": ["shop"], "jwks": {},
                  "fromHeaders": [{{"name": "X-User-Token"}}], "forwardOriginalToken": true}}]}}}}"#,
            issuer.jwks
        );
        let ra = &parse_documents(&object).unwrap().authentication[0];
        assert_eq!(ra.service, None);
        assert_eq!(
            ra.jwt_rules[0].from_headers,
            vec![FromHeader {
                name: "x-user-token".into(),
                prefix: String::new()
            }]
        );
        assert!(ra.jwt_rules[0].forward_original_token);
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let text = r#"
apiVersion: palisade.dev/v1
kind: RequestAuthentication
metadata: { name: bad, namespace: shop }
spec:
  jwtRules:
    - audiences: []
      jwks: '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'
      fromHeaders: [ { name: "bad header" } ]
      colour: blue
    - issuer: x
      audiences: [shop]
      jwks: '{}'
      jwksFile: /etc/jwks.json
    - issuer: other
      audiences: [shop]
      jwksFile: relative.json
      forwardOriginalToken: "yes"
"#;
        let expect = [
            "spec.jwtRules[0].colour: unknown field",
            "spec.jwtRules[0].issuer: is required",
            "spec.jwtRules[0].audiences: must name at least one audience",
            "spec.jwtRules[0].jwks: JWKS has no usable asymmetric key",
            "spec.jwtRules[0].fromHeaders[0].name: \"bad header\" is not a header name",
            "spec.jwtRules[1]: give exactly one of jwks and jwksFile",
            "spec.jwtRules[2].jwksFile: \"relative.json\" must be an absolute path",
            "spec.jwtRules[2].forwardOriginalToken: must be true or false",
        ];
        crate::documents::tests::assert_problems(text, &expect);

        let empty = "apiVersion: palisade.dev/v1\nkind: RequestAuthentication\nmetadata: { name: e, namespace: shop }\nspec: { jwtRules: [] }\n";
        assert_eq!(
            parse_documents(empty).unwrap_err().0[0].to_string(),
            "spec.jwtRules: must have at least one rule"
        );
    }

    #[test]
    fn an_unreadable_jwks_file_is_a_problem_of_its_document() {
        let text = format!(
            "apiVersion: palisade.dev/v1\nkind: RequestAuthentication\nmetadata: {{ name: f, namespace: shop }}\nspec:\n  jwtRules: [ {{ issuer: {ISS}, audiences: [shop], jwksFile: /nonexistent/jwks.json }} ]\n"
        );
        let docs = parse_documents(&text).unwrap();
        let err = Authenticator::new(&docs.authentication).unwrap_err().0;
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .to_string()
                .starts_with("shop/f: spec.jwtRules[0]: jwksFile /nonexistent/jwks.json:"),
            "{}",
            err[0]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let issuer = TestIssuer::new("k1");
        std::fs::write(&path, issuer.jwks.to_string()).unwrap();
        let from_file = Authenticator::new(
            &parse_documents(&text.replace("/nonexistent/jwks.json", path.to_str().unwrap()))
                .unwrap()
                .authentication,
        )
        .unwrap();
        let user = from_file
            .authenticate(&PAYMENTS, &bearer(&issuer.sign(&claims())))
            .unwrap()
            .unwrap();
        assert_eq!(user.principal, format!("{ISS}/alice"));
    }

    #[test]
    fn a_valid_token_gives_the_principal_and_claims_and_is_not_forwarded() {
        let issuer = TestIssuer::new("k1");
        let authn = authenticator(&doc(&issuer, ""));
        let user = authn
            .authenticate(&PAYMENTS, &bearer(&issuer.sign(&claims())))
            .unwrap()
            .expect("a valid token authenticates");
        assert_eq!(user.principal, "https://idp.example/alice");
        assert_eq!(user.claims["tenant"], "acme");
        assert_eq!(user.strip_header, Some(http::header::AUTHORIZATION));

        // The scheme is case-insensitive.
        let mut h = HeaderMap::new();
        let token = issuer.sign(&claims());
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("bearer {token}")).unwrap(),
        );
        assert!(authn.authenticate(&PAYMENTS, &h).unwrap().is_some());

        let forwarding = authenticator(&doc(&issuer, "      forwardOriginalToken: true\n"));
        let user = forwarding
            .authenticate(&PAYMENTS, &bearer(&token))
            .unwrap()
            .unwrap();
        assert_eq!(user.strip_header, None);
    }

    #[test]
    fn no_token_or_no_document_is_unauthenticated_not_refused() {
        let issuer = TestIssuer::new("k1");
        let authn = authenticator(&doc(&issuer, ""));
        assert_eq!(authn.authenticate(&PAYMENTS, &HeaderMap::new()), Ok(None));
        // Another scheme in the header is not a token.
        let mut basic = HeaderMap::new();
        basic.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
        );
        assert_eq!(authn.authenticate(&PAYMENTS, &basic), Ok(None));
        // A workload no document selects does not look at tokens at all.
        let other = Workload {
            namespace: "shop",
            service: "orders",
        };
        assert_eq!(authn.authenticate(&other, &bearer("garbage")), Ok(None));
    }

    #[test]
    fn invalid_tokens_are_refused_with_the_reason() {
        let issuer = TestIssuer::new("k1");
        let impostor = TestIssuer::new("k1");
        let authn = authenticator(&doc(&issuer, ""));
        let check = |token: String, want: TokenError| {
            assert_eq!(
                authn.authenticate(&PAYMENTS, &bearer(&token)),
                Err(want.clone()),
                "expected {want:?}"
            );
        };
        let t = now();
        let with = |patch: Value| {
            let mut c = claims();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        check(impostor.sign(&claims()), TokenError::BadSignature);
        check(
            issuer.sign_as(Some("other"), &claims()),
            TokenError::UnknownKey,
        );
        check(
            issuer.sign(&with(json!({"exp": t - 60}))),
            TokenError::Expired,
        );
        check(
            issuer.sign(&with(json!({"nbf": t + 60}))),
            TokenError::NotYetValid,
        );
        check(
            issuer.sign(&with(json!({"aud": "elsewhere"}))),
            TokenError::WrongAudience,
        );
        check(
            issuer.sign(&with(json!({"iss": "https://evil.example"}))),
            TokenError::UnknownIssuer,
        );
        check(
            issuer.sign(&with(json!({"exp": null}))),
            TokenError::BadClaims,
        );
        check(
            issuer.sign(&with(json!({"aud": null}))),
            TokenError::BadClaims,
        );
        check(
            issuer.sign(&with(json!({"sub": null}))),
            TokenError::BadClaims,
        );
        check("not.a.jwt".into(), TokenError::Malformed);
        // alg none: a token with an empty signature.
        let unsigned = {
            let mut parts: Vec<String> = issuer
                .sign(&claims())
                .split('.')
                .map(str::to_owned)
                .collect();
            use base64::Engine;
            parts[0] = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
            parts[2].clear();
            parts.join(".")
        };
        assert!(authn.authenticate(&PAYMENTS, &bearer(&unsigned)).is_err());
    }

    #[test]
    fn every_line_of_a_token_header_is_read_and_one_token_at_most() {
        let issuer = TestIssuer::new("k1");
        let impostor = TestIssuer::new("k1");
        let authn = authenticator(&doc(&issuer, ""));
        let lines = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    http::header::AUTHORIZATION,
                    HeaderValue::from_bytes(v).unwrap(),
                );
            }
            h
        };
        let good = format!("Bearer {}", issuer.sign(&claims()));
        let forged = format!("Bearer {}", impostor.sign(&claims()));
        // A forged token behind a Basic line is still read, and refused.
        assert_eq!(
            authn.authenticate(
                &PAYMENTS,
                &lines(&[b"Basic YWxhZGRpbg==", forged.as_bytes()])
            ),
            Err(TokenError::BadSignature)
        );
        // A valid token behind a Basic line is the end user.
        assert!(
            authn
                .authenticate(&PAYMENTS, &lines(&[b"Basic YWxhZGRpbg==", good.as_bytes()]))
                .unwrap()
                .is_some()
        );
        // Two tokens: which one would the application read? Refused.
        assert_eq!(
            authn.authenticate(&PAYMENTS, &lines(&[good.as_bytes(), good.as_bytes()])),
            Err(TokenError::Ambiguous)
        );
        assert_eq!(
            authn.authenticate(&PAYMENTS, &lines(&[good.as_bytes(), forged.as_bytes()])),
            Err(TokenError::Ambiguous)
        );
        // A line that is not ASCII is not "no token".
        assert_eq!(
            authn.authenticate(&PAYMENTS, &lines(&[b"Bearer \xffabc"])),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            authn.authenticate(&PAYMENTS, &lines(&[b"Basic x", b"Bearer \xe9t\xe9"])),
            Err(TokenError::Malformed)
        );
        // Tokens in two headers that rules read: refused too.
        let two = authenticator(&doc(
            &issuer,
            "      fromHeaders: [ { name: authorization, prefix: \"Bearer \" }, { name: x-jwt-assertion } ]\n",
        ));
        let mut h = lines(&[good.as_bytes()]);
        h.insert(
            "x-jwt-assertion",
            HeaderValue::from_str(&impostor.sign(&claims())).unwrap(),
        );
        assert_eq!(two.authenticate(&PAYMENTS, &h), Err(TokenError::Ambiguous));
        assert_eq!(
            two.token_headers(&PAYMENTS),
            [
                http::header::AUTHORIZATION,
                HeaderName::from_static("x-jwt-assertion")
            ]
        );
    }

    #[test]
    fn tokens_in_a_custom_header() {
        let issuer = TestIssuer::new("k1");
        let authn = authenticator(&doc(
            &issuer,
            "      fromHeaders: [ { name: x-jwt-assertion } ]\n",
        ));
        let mut h = HeaderMap::new();
        h.insert(
            "x-jwt-assertion",
            HeaderValue::from_str(&issuer.sign(&claims())).unwrap(),
        );
        let user = authn.authenticate(&PAYMENTS, &h).unwrap().unwrap();
        assert_eq!(
            user.strip_header,
            Some(HeaderName::from_static("x-jwt-assertion"))
        );
        // Authorization is not read by this rule.
        assert_eq!(
            authn.authenticate(&PAYMENTS, &bearer(&issuer.sign(&claims()))),
            Ok(None)
        );
    }
}
