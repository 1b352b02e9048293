//! The mesh a run measures: the control plane, the sidecars (with their policies and
//! registry) and the identity the simulated sidecars borrow.

use crate::mesh::{Procs, free_addr, wait_status};
use anyhow::bail;
use palisade_contract::tls::{IdentitySlot, SharedBundle};
use palisade_contract::{SpiffeId, TrustDomain};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// What a simulated sidecar needs to speak to the control plane as `orders`: its identity,
/// its trust bundle, and the control plane's SPIFFE ID.
pub(crate) fn sidecar_tls(
    identity_dir: &Path,
) -> anyhow::Result<(Arc<IdentitySlot>, SharedBundle, SpiffeId)> {
    use palisade_contract::tls::{TrustBundle, WorkloadIdentity, shared_bundle};
    let td = TrustDomain::parse("palisade.local")?;
    let identity = WorkloadIdentity::from_pem(
        &std::fs::read(identity_dir.join("cert.pem"))?,
        &std::fs::read(identity_dir.join("key.pem"))?,
    )?;
    let bundle =
        TrustBundle::from_pem(td.clone(), &std::fs::read(identity_dir.join("bundle.pem"))?)?;
    let slot = IdentitySlot::new();
    slot.set(identity);
    Ok((
        slot,
        shared_bundle(bundle),
        palisade_contract::identity_api::control_plane_id(&td),
    ))
}

/// A running sidecar.
pub(crate) struct Sidecar {
    pub(crate) pid: u32,
    pub(crate) outbound: SocketAddr,
    pub(crate) amqp: Option<SocketAddr>,
    /// Where callgrind writes its profiles (`--callgrind`).
    pub(crate) profile: Option<PathBuf>,
}

/// The running control plane and application, and how to start sidecars next to them.
pub(crate) struct Mesh {
    pub(crate) bin_dir: PathBuf,
    pub(crate) work: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) cp_sidecar: SocketAddr,
    pub(crate) cp_admin: SocketAddr,
    pub(crate) app: SocketAddr,
    /// Every sidecar runs under callgrind (profiles in `work/<sa>.callgrind.N`).
    pub(crate) callgrind: bool,
}

impl Mesh {
    /// Starts a sidecar of service account `sa` in namespace `shop` (a join token from the
    /// CLI, as an operator would make one), its files named after `name`, and waits until
    /// it is ready.
    pub(crate) async fn sidecar(
        &self,
        procs: &mut Procs,
        name: &str,
        sa: &str,
        inbound: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Sidecar> {
        let token = Command::new(self.bin_dir.join("palisade"))
            .args([
                "--server",
                &format!("http://{}", self.cp_admin),
                "--token-file",
            ])
            .arg(self.data.join("admin-token"))
            .args(["token", "create", "-n", "shop", "-s", sa])
            .output()?;
        if !token.status.success() {
            bail!("token create: {}", String::from_utf8_lossy(&token.stderr));
        }
        let token_file = self.work.join(format!("{name}.token"));
        std::fs::write(&token_file, token.stdout)?;
        let (admin, outbound) = (free_addr(), free_addr());
        let amqp = extra.iter().any(|a| a == "--amqp-upstream").then(free_addr);
        let mut args: Vec<String> = vec![
            "--control-plane".into(),
            self.cp_sidecar.to_string(),
            "--ca-bundle".into(),
            self.data.join("trust-bundle.pem").display().to_string(),
            "--token-file".into(),
            token_file.display().to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--inbound-listen".into(),
            inbound.to_string(),
            "--outbound-listen".into(),
            outbound.to_string(),
            "--app".into(),
            self.app.to_string(),
            "--audit-log".into(),
            self.work
                .join(format!("{name}-audit.jsonl"))
                .display()
                .to_string(),
            "--identity-dir".into(),
            self.work.join(format!("{name}-id")).display().to_string(),
        ];
        if let Some(a) = amqp {
            args.extend(["--amqp-listen".into(), a.to_string()]);
        }
        args.extend(extra.iter().cloned());
        let proxy = self.bin_dir.join("palisade-proxy");
        let profile = self
            .callgrind
            .then(|| self.work.join(format!("{name}.callgrind")));
        let (program, args) = match &profile {
            Some(profile) => crate::callgrind::wrap(&proxy, &args, profile),
            None => (proxy, args),
        };
        let pid = procs.spawn(
            name,
            &program,
            &args,
            &self.work.join(format!("{name}.log")),
        )?;
        // Under callgrind a start takes tens of seconds, not one.
        let mut ready = wait_status(admin, "admin", "/ready", 200).await;
        for _ in 0..if self.callgrind { 11 } else { 0 } {
            if ready.is_ok() {
                break;
            }
            ready = wait_status(admin, "admin", "/ready", 200).await;
        }
        ready?;
        Ok(Sidecar {
            pid,
            outbound,
            amqp,
            profile,
        })
    }

    /// The arguments that give sidecar `name` the durable decision log, shipped as
    /// `--decision-ship` says.
    pub(crate) fn decision_log(&self, name: &str, ship: &str) -> Vec<String> {
        vec![
            "--decision-dir".into(),
            self.work
                .join(format!("{name}-decisions"))
                .display()
                .to_string(),
            "--decision-ship".into(),
            ship.into(),
        ]
    }
}

pub(crate) fn write_policy(path: &Path, name: &str, rules: &str) -> anyhow::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n{rules}"
        ),
    )?;
    Ok(())
}
