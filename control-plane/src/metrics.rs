//! The control plane's Prometheus metrics. One registry is built at start-up and handed to
//! the components that count; nothing is global. Served on `--metrics-listen` at `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use palisade_contract::telemetry::encode_metrics;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::ca::CertificateAuthority;

/// `GET /metrics`: the registry, with the trust bundle's root count read at scrape time.
pub fn router(registry: Registry, ca: Arc<CertificateAuthority>, bundle_roots: IntGauge) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let (registry, ca, gauge) = (registry.clone(), ca.clone(), bundle_roots.clone());
            async move {
                gauge.set(ca.bundle().load().len() as i64);
                encode_metrics(&registry)
            }
        }),
    )
}

#[derive(Clone, Debug)]
pub struct CaMetrics {
    /// Certificates issued, by how the caller authenticated (`join_token`, `kubernetes`,
    /// `renewal`).
    pub issued: IntCounterVec,
    /// Refused requests, by reason (a fixed set: see `IssueError::label`).
    pub refused: IntCounterVec,
    /// Time to verify a request and sign its certificate.
    pub issue_duration: Histogram,
    /// Roots in the trust bundle.
    pub bundle_roots: IntGauge,
    /// 1 when a private key is protected at rest (`envelope`), 0 when it is a plain file,
    /// by key (`ca`, `token`): alert on 0 outside local mode.
    pub key_protected: IntGaugeVec,
}

impl CaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let issued = IntCounterVec::new(
            Opts::new(
                "palisade_ca_certificates_issued_total",
                "Workload certificates issued, by authentication method.",
            ),
            &["method"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "palisade_ca_requests_refused_total",
                "Certificate requests refused, by reason.",
            ),
            &["reason"],
        )?;
        let issue_duration = Histogram::with_opts(
            HistogramOpts::new(
                "palisade_ca_issue_duration_seconds",
                "Time to authenticate a certificate request and sign it.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
        )?;
        let bundle_roots = IntGauge::new(
            "palisade_ca_trust_bundle_roots",
            "Root certificates in the trust bundle.",
        )?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(issue_duration.clone()))?;
        let key_protected = IntGaugeVec::new(
            Opts::new(
                "palisade_ca_key_protected",
                "1 when the private key is kept encrypted at rest (envelope), 0 for a plain file.",
            ),
            &["key"],
        )?;
        registry.register(Box::new(bundle_roots.clone()))?;
        registry.register(Box::new(key_protected.clone()))?;
        Ok(Self {
            issued,
            refused,
            issue_duration,
            bundle_roots,
            key_protected,
        })
    }
}

/// The sidecar injector's admission webhook.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    /// Admission reviews answered, by result: `injected`, `skipped` (opted out, already
    /// injected, not a pod creation...), `refused` (a pod that cannot be injected),
    /// `invalid` (not an AdmissionReview: 400).
    pub reviews: IntCounterVec,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reviews = IntCounterVec::new(
            Opts::new(
                "palisade_injection_reviews_total",
                "Admission reviews the sidecar injector answered, by result.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reviews.clone()))?;
        Ok(Self { reviews })
    }
}
