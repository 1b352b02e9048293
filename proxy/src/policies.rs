//! What this workload enforces, as one value swapped whole when it changes: the
//! authorization policies and the end-user authentication rules. The inbound HTTP path, the
//! opaque TCP path and the AMQP proxy all read it (one `load` per decision), and the
//! configuration watcher (or the policy file) replaces it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_contract::SpiffeId;
use palisade_contract::documents::{Problems, parse_documents, parse_services};
use palisade_contract::policy::{Authenticator, DefaultMode, PolicySet};
use palisade_contract::registry::ServiceRegistry;

/// Where the policies and the registry come from: the files given, or (with neither) the
/// control plane, which pushes both.
#[derive(Debug, Clone)]
pub struct PolicySource {
    pub policy_file: Option<PathBuf>,
    pub registry_file: Option<PathBuf>,
    pub default_mode: DefaultMode,
}

impl PolicySource {
    /// Whether the configuration comes from the control plane.
    pub fn from_control_plane(&self) -> bool {
        self.policy_file.is_none() && self.registry_file.is_none()
    }
}

/// The service policies select a workload by: `--service`, else its service account.
pub fn service_name(configured: Option<&str>, own: Option<&SpiffeId>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| {
            own.and_then(SpiffeId::namespace_and_service_account)
                .map(|(_, sa)| sa.to_owned())
        })
        .unwrap_or_default()
}

/// What the inbound path enforces, swapped whole when it changes.
#[derive(Debug, Default)]
pub struct Policies {
    pub authorization: PolicySet,
    pub authentication: Authenticator,
}

/// The documents in the file `flag` names, read by `parse`; every problem in the error, one
/// per line.
fn read_documents<T>(
    path: &Path,
    flag: &str,
    parse: impl Fn(&str) -> Result<T, Problems>,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    parse(&text).map_err(|problems| {
        let lines: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{flag} {}:\n  {}", path.display(), lines.join("\n  "))
    })
}

/// The registry from `--registry-file` (every problem reported), or an empty one.
pub fn load_registry(source: &PolicySource) -> anyhow::Result<ServiceRegistry> {
    let entries = match &source.registry_file {
        Some(path) => read_documents(path, "--registry-file", parse_services)?,
        None => Vec::new(),
    };
    Ok(ServiceRegistry::new(entries))
}

/// The policy set and the end-user authenticator from `--policy-file` (every problem
/// reported), or empty ones.
pub fn load_policies(source: &PolicySource) -> anyhow::Result<Policies> {
    let docs = match &source.policy_file {
        Some(path) => read_documents(path, "--policy-file", parse_documents)?,
        None => Default::default(),
    };
    let authenticator = Authenticator::new(&docs.authentication)
        .map_err(|problems| anyhow::anyhow!("--policy-file: {problems}"))?;
    Ok(Policies {
        authorization: PolicySet::new(&docs.authorization, 1, source.default_mode),
        authentication: authenticator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_is_refused_with_the_flag_and_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policies.yaml");
        std::fs::write(
            &path,
            "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {action: MAYBE, rules: [{to: [{methods: [get]}]}]}\n",
        )
        .unwrap();
        let source = |policy: Option<&Path>, registry: Option<&Path>| PolicySource {
            policy_file: policy.map(Path::to_path_buf),
            registry_file: registry.map(Path::to_path_buf),
            default_mode: DefaultMode::Deny,
        };
        let err = load_policies(&source(Some(&path), None))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--policy-file "), "{err}");
        assert!(err.contains("spec.action: \"MAYBE\""), "{err}");
        assert!(err.contains("\n  spec.rules[0].to[0].methods[0]"), "{err}");
        // A policy is not a service: the registry file refuses it.
        let err = load_registry(&source(None, Some(&path)))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--registry-file "), "{err}");
        let missing = dir.path().join("missing.yaml");
        let err = format!(
            "{:#}",
            load_policies(&source(Some(&missing), None)).unwrap_err()
        );
        assert!(err.starts_with("reading --policy-file"), "{err}");
        // Neither file: nothing to load, everything from the control plane.
        assert!(source(None, None).from_control_plane());
        assert!(load_registry(&source(None, None)).is_ok());
    }
}
