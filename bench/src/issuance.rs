//! Certificate issuance: CSRs signed per second by the control plane, through the
//! sidecars' own client ([`palisade_proxy::control_plane_client`]) on the renewal path: a
//! fresh mTLS connection per call (as sidecars make), CSR signature checked, a leaf
//! signed, the workload recorded. The CSRs are made before the clock starts, so key
//! generation (the sidecar's cost, not the control plane's) is not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use palisade_contract::tls::IdentitySlot;
use palisade_proxy::control_plane_client::ControlPlaneClient;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use crate::load::percentile;

/// Signed per second, p50 and p99 milliseconds per call, errors.
pub async fn rate(
    cp: std::net::SocketAddr,
    identity: Arc<IdentitySlot>,
    bundle: palisade_contract::tls::SharedBundle,
    server: palisade_contract::SpiffeId,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let mut csrs = Vec::with_capacity(64);
    for _ in 0..64 {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        csrs.push(params.serialize_request(&key)?.pem()?);
    }
    let csrs = Arc::new(csrs);
    let client = ControlPlaneClient::new(
        cp.to_string(),
        server,
        bundle,
        identity,
        std::time::Duration::from_secs(5),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (client, csrs, stop) = (client.clone(), csrs.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut times, mut errors) = (Vec::new(), 0u64);
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match client.renew(csrs[n % csrs.len()].clone()).await {
                    Ok(_) => times.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => errors += 1,
                }
                n += concurrency;
            }
            (times, errors)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let (mut times, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (t, e) = t.await?;
        times.extend(t);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    times.sort_by(|a, b| a.total_cmp(b));
    Ok((
        times.len() as f64 / elapsed,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        errors,
    ))
}

/// Issuance with each key source (`--ca-key-source file | envelope | pkcs11`, the token key
/// likewise): a control plane in this process per source, on a fresh data dir under `work`
/// (pkcs11 on a SoftHSM2 token made for the run), measured as [`rate`] measures. All three
/// run the same way, so they compare with each other (the main issuance row uses the
/// control plane process of the mesh).
pub async fn by_key_source(
    work: &std::path::Path,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Vec<(&'static str, (f64, f64, f64, u64))>> {
    use palisade_contract::identity_api::control_plane_id;
    use palisade_contract::tls::{TrustBundle, WorkloadIdentity, shared_bundle};
    use palisade_control_plane::keys::{Kek, KeySource, softhsm::TestToken};
    let token = TestToken::new("bench");
    let kek = work.join("bench-kek");
    std::fs::write(&kek, Kek::generate_base64().as_bytes())?;
    let mut rows = Vec::new();
    for (name, source) in [
        ("file", KeySource::File),
        ("envelope", KeySource::Envelope),
        ("pkcs11", KeySource::Pkcs11),
    ] {
        let mut config =
            palisade_control_plane::Config::for_data_dir(work.join(format!("cp-keys-{name}")));
        config.ca_key_source = source;
        config.token_key_source = source;
        config.key_encryption_key_file = Some(kek.clone());
        config.set_token_settings(&token.settings);
        let cp = palisade_control_plane::start(&config).await?;
        let td = config.trust_domain.clone();
        let bundle = shared_bundle(TrustBundle::from_pem(
            td.clone(),
            &std::fs::read(config.data_dir.join("trust-bundle.pem"))?,
        )?);
        let join = cp
            .create_join_token("shop", "orders", Duration::from_secs(300))
            .await?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let slot = IdentitySlot::new();
        let client = ControlPlaneClient::new(
            cp.sidecar_addr.to_string(),
            control_plane_id(&td),
            bundle.clone(),
            slot.clone(),
            Duration::from_secs(5),
        );
        let issued = client
            .issue(&join.token, params.serialize_request(&key)?.pem()?)
            .await?;
        slot.set(WorkloadIdentity::from_pem(
            issued.certificate_chain.as_bytes(),
            key.serialize_pem().as_bytes(),
        )?);
        let measured = rate(
            cp.sidecar_addr,
            slot,
            bundle,
            control_plane_id(&td),
            concurrency,
            duration,
        )
        .await?;
        cp.shutdown().await;
        rows.push((name, measured));
    }
    Ok(rows)
}
