//! The walk over a generic YAML/JSON value that every document kind is parsed with.
//!
//! Parsing goes through a generic value first and then walks it field by field, so that
//! *every* problem is reported with its location (`spec.rules[0].to[0].methods[1]: "get" is
//! not an upper-case HTTP method`), and unknown fields are errors rather than silently
//! ignored. Each kind's own fields are walked beside its schema
//! ([`crate::policy::authorization`], [`crate::policy::authentication`], [`crate::registry`]);
//! this module holds what they share: the problems, the envelope, the limits.

use serde::Serialize;
use serde_json::{Map, Value};

use super::kind::{API_VERSION, Kind};
use crate::spiffe::{validate_namespace, validate_service_account};

/// Limits that keep a policy cheap to compile and to evaluate.
pub const MAX_RULES: usize = 256;
pub const MAX_VALUES: usize = 1024;
pub const MAX_VALUE_LEN: usize = 1024;

/// One problem in a document, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub location: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Every problem found in an input, in document order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct Problems(pub Vec<Problem>);

pub(crate) fn join(base: &str, field: &str) -> String {
    if base.is_empty() {
        field.to_owned()
    } else {
        format!("{base}.{field}")
    }
}

/// Walks a generic value, collecting every problem with its location.
pub(crate) struct Walk<'p> {
    pub(crate) problems: &'p mut Vec<Problem>,
}

/// The common parts of a document, as [`Walk::envelope`] found them.
pub(crate) struct Envelope<'v> {
    pub(crate) name: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) spec: &'v Map<String, Value>,
    pub(crate) spec_loc: String,
}

impl Walk<'_> {
    pub(crate) fn problem(&mut self, location: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            location: if location.is_empty() {
                "document".into()
            } else {
                location.to_owned()
            },
            message: message.into(),
        });
    }

    /// The value as an object whose fields are all in `known`; unknown fields are reported.
    pub(crate) fn object<'v>(
        &mut self,
        v: &'v Value,
        loc: &str,
        known: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.problem(loc, format!("must be an object, not {}", type_name(v)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                self.problem(
                    &join(loc, key),
                    format!("unknown field (expected one of: {})", known.join(", ")),
                );
            }
        }
        Some(map)
    }

    pub(crate) fn string<'v>(&mut self, v: &'v Value, loc: &str) -> Option<&'v str> {
        match v.as_str() {
            Some(s) if s.len() <= MAX_VALUE_LEN => Some(s),
            Some(_) => {
                self.problem(loc, format!("is longer than {MAX_VALUE_LEN} bytes"));
                None
            }
            None => {
                self.problem(loc, format!("must be a string, not {}", type_name(v)));
                None
            }
        }
    }

    pub(crate) fn list<'v>(&mut self, v: Option<&'v Value>, loc: &str) -> &'v [Value] {
        match v {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) if items.len() <= MAX_VALUES => items,
            Some(Value::Array(_)) => {
                self.problem(loc, format!("has more than {MAX_VALUES} entries"));
                &[]
            }
            Some(other) => {
                self.problem(loc, format!("must be a list, not {}", type_name(other)));
                &[]
            }
        }
    }

    /// The list `field` of `map`, each entry parsed by `parse` (at most [`MAX_RULES`]).
    pub(crate) fn rules<T>(
        &mut self,
        map: &Map<String, Value>,
        base: &str,
        field: &str,
        parse: impl Fn(&mut Self, &Value, &str) -> Option<T>,
    ) -> Vec<T> {
        let loc = join(base, field);
        let items = self.list(map.get(field), &loc);
        if items.len() > MAX_RULES {
            self.problem(&loc, format!("has more than {MAX_RULES} rules"));
        }
        items
            .iter()
            .enumerate()
            .filter_map(|(i, r)| parse(self, r, &format!("{loc}[{i}]")))
            .collect()
    }

    /// A list of strings, each checked by `check` (which returns why a value is wrong).
    pub(crate) fn strings(
        &mut self,
        map: &Map<String, Value>,
        base: &str,
        field: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Vec<String> {
        let loc = join(base, field);
        let mut out = Vec::new();
        for (i, item) in self.list(map.get(field), &loc).iter().enumerate() {
            let item_loc = format!("{loc}[{i}]");
            if let Some(s) = self.string(item, &item_loc) {
                match check(s) {
                    Ok(()) => out.push(s.to_owned()),
                    Err(why) => self.problem(&item_loc, format!("{s:?} {why}")),
                }
            }
        }
        out
    }

    pub(crate) fn ports(&mut self, map: &Map<String, Value>, base: &str, field: &str) -> Vec<u16> {
        let loc = join(base, field);
        let mut out = Vec::new();
        for (i, item) in self.list(map.get(field), &loc).iter().enumerate() {
            // Istio writes ports as strings; numbers are accepted too.
            let port = match item {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.parse::<u64>().ok(),
                _ => None,
            };
            match port {
                Some(p @ 1..=65535) => out.push(p as u16),
                _ => self.problem(
                    &format!("{loc}[{i}]"),
                    format!("{item} is not a port (1-65535)"),
                ),
            }
        }
        out
    }

    /// The parts every document kind shares: `apiVersion`, `kind`, `metadata` (name and
    /// namespace) and a `spec` object with the given fields.
    pub(crate) fn envelope<'v>(
        &mut self,
        v: &'v Value,
        root: &str,
        kind: Kind,
        spec_fields: &[&str],
    ) -> Option<Envelope<'v>> {
        let doc = self.object(v, root, &["apiVersion", "kind", "metadata", "spec"])?;
        match doc.get("apiVersion").and_then(Value::as_str) {
            Some(API_VERSION) => {}
            _ => self.problem(
                &join(root, "apiVersion"),
                format!("must be {API_VERSION:?}"),
            ),
        }
        if doc.get("kind").and_then(Value::as_str) != Some(kind.as_str()) {
            self.problem(&join(root, "kind"), format!("must be {:?}", kind.as_str()));
        }
        let (name, namespace) = self.metadata(doc.get("metadata"), &join(root, "metadata"));
        let spec_loc = join(root, "spec");
        // A missing spec is an empty one (for an ALLOW policy: allow nothing, as Istio).
        static EMPTY: std::sync::LazyLock<Value> =
            std::sync::LazyLock::new(|| Value::Object(Map::new()));
        let spec = self.object(doc.get("spec").unwrap_or(&EMPTY), &spec_loc, spec_fields)?;
        Some(Envelope {
            name,
            namespace,
            spec,
            spec_loc,
        })
    }

    /// `spec.selector`: `Ok(None)` protects the whole namespace; `Err` was reported.
    pub(crate) fn selector(
        &mut self,
        spec: &Map<String, Value>,
        spec_loc: &str,
    ) -> Result<Option<String>, ()> {
        let sel = match spec.get("selector") {
            None | Some(Value::Null) => return Ok(None),
            Some(sel) => sel,
        };
        let loc = join(spec_loc, "selector");
        let sel = self.object(sel, &loc, &["service"]).ok_or(())?;
        let Some(s) = sel.get("service") else {
            self.problem(
                &loc,
                "must name a service (omit the selector to protect the whole namespace)",
            );
            return Err(());
        };
        let loc = join(&loc, "service");
        let s = self.string(s, &loc).ok_or(())?;
        match validate_namespace(s) {
            Ok(()) => Ok(Some(s.to_owned())),
            Err(_) => {
                self.problem(
                    &loc,
                    format!("{s:?} is not a valid service name (a DNS label)"),
                );
                Err(())
            }
        }
    }

    pub(crate) fn metadata(
        &mut self,
        v: Option<&Value>,
        loc: &str,
    ) -> (Option<String>, Option<String>) {
        let Some(v) = v else {
            self.problem(loc, "is required (name and namespace)");
            return (None, None);
        };
        let Some(meta) = self.object(v, loc, &["name", "namespace", "labels", "annotations"])
        else {
            return (None, None);
        };
        let field = |walk: &mut Self, key: &str, check: fn(&str) -> bool, rule: &str| {
            let loc = join(loc, key);
            match meta.get(key) {
                None => {
                    walk.problem(&loc, "is required");
                    None
                }
                Some(v) => walk.string(v, &loc).and_then(|s| {
                    if check(s) {
                        Some(s.to_owned())
                    } else {
                        walk.problem(&loc, format!("{s:?} is not {rule}"));
                        None
                    }
                }),
            }
        };
        let name = field(
            self,
            "name",
            |s| validate_service_account(s).is_ok(),
            "a valid name (a DNS subdomain)",
        );
        let namespace = field(
            self,
            "namespace",
            |s| validate_namespace(s).is_ok(),
            "a valid namespace (a DNS label)",
        );
        (name, namespace)
    }
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
