//! What every admin handler shares.

use std::sync::Arc;

use palisade_contract::SpiffeId;

use crate::admin_tokens::AdminTokenIssuer;
use crate::ca::CertificateAuthority;
use crate::join_tokens::JoinTokenIssuer;
use crate::mesh_config::MeshConfig;
use crate::tokens::TokenKey;

use super::{K8sAdmins, OidcAdmins, Role};

pub struct AdminState {
    pub ca: Arc<CertificateAuthority>,
    pub token_key: Arc<TokenKey>,
    /// The record every local admin token is checked against (revocation).
    pub admin_tokens: AdminTokenIssuer,
    pub join_tokens: JoinTokenIssuer,
    pub mesh: Arc<MeshConfig>,
    /// Operators' tokens from an OIDC provider, when configured.
    pub oidc: Option<OidcAdmins>,
    /// With `--admin-tls`: SPIFFE IDs whose client certificate stands for a role.
    pub spiffe_admins: Vec<(SpiffeId, Role)>,
    /// Kubernetes ServiceAccounts whose tokens stand for a role, when configured.
    pub k8s_admins: Option<K8sAdmins>,
}
