//! The sidecar's data-plane metrics, registered on the registry the admin port serves.
//! Labels come from small fixed sets: direction, decision, status class, result, the peer's
//! SPIFFE ID (bounded by the mesh's workloads) and the deciding policy (bounded by the
//! policies); never a path or a header value.

use std::time::Duration;

use palisade_contract::policy::{Basis, Decision};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every data-plane metric of the sidecar (HTTP, opaque TCP, AMQP, handshakes, policy
/// decisions, the audit writer), registered once and cloned into each path.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    decisions: IntCounterVec,
    handshakes: IntCounterVec,
    open: IntGaugeVec,
    tcp_connections: IntCounterVec,
    tcp_bytes: IntCounterVec,
    amqp_operations: IntCounterVec,
    provenance: IntCounterVec,
    amqp_bytes: IntCounterVec,
    pub amqp_channels: IntGauge,
    pub policy_version: IntGauge,
    pub audit_dropped: IntCounter,
    /// The decision spool (`--decision-dir`).
    pub spool: SpoolMetrics,
}

/// What the decision spool counts.
#[derive(Debug, Clone)]
pub struct SpoolMetrics {
    /// Lines (decisions and checkpoints) handed to the kernel.
    pub written: IntCounter,
    /// Bytes in the spool's segments.
    pub bytes: IntGauge,
    /// Failed writes (each retried; the decisions behind them wait).
    pub write_errors: IntCounter,
    /// Lines the control plane acknowledged as stored.
    pub shipped: IntCounter,
    /// Lines written and not yet acknowledged.
    pub unshipped: IntGauge,
    /// When the oldest line not yet acknowledged was written (Unix seconds; 0: none).
    pub oldest_unshipped: IntGauge,
    /// Failed shipping attempts (each retried with backoff).
    pub ship_errors: IntCounter,
    /// Decisions not written because the spool was full (in a gap entry).
    pub dropped: IntCounter,
    /// Requests, connections and publishes refused because the spool was full.
    pub refused: IntCounter,
}

/// Decrements the open-connection gauge when the connection ends.
#[derive(Debug)]
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ProxyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_http_requests_total",
                "HTTP requests, by direction, peer, decision and status class.",
            ),
            &["direction", "peer", "decision", "status_class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "palisade_proxy_http_request_duration_seconds",
                "Time until the response headers, by direction.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["direction"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_authz_decisions_total",
                "Authorization decisions, by deciding policy and decision.",
            ),
            &["policy", "decision"],
        )?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_tls_handshakes_total",
                "TLS handshakes, by direction and result.",
            ),
            &["direction", "result"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "palisade_proxy_open_connections",
                "Open connections, by direction.",
            ),
            &["direction"],
        )?;
        let tcp_connections = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_tcp_connections_total",
                "Opaque TCP connections, by direction, peer and decision.",
            ),
            &["direction", "peer", "decision"],
        )?;
        let tcp_bytes = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_tcp_bytes_total",
                "Bytes piped on opaque TCP connections, by direction and flow (sent to or \
                 received from the peer sidecar).",
            ),
            &["direction", "flow"],
        )?;
        let amqp_operations = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_amqp_operations_total",
                "AMQP operations authorized, by operation and decision.",
            ),
            &["operation", "decision"],
        )?;
        let provenance = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_amqp_provenance_total",
                "Publisher signatures made (sign) and checked (verify), by result.",
            ),
            &["operation", "result"],
        )?;
        let amqp_bytes = IntCounterVec::new(
            Opts::new(
                "palisade_proxy_amqp_bytes_total",
                "AMQP frame bytes read, by flow (from_client, from_broker).",
            ),
            &["flow"],
        )?;
        let amqp_channels = IntGauge::new(
            "palisade_proxy_amqp_channels",
            "AMQP channels open through the sidecar.",
        )?;
        let policy_version = IntGauge::new(
            "palisade_proxy_policy_version",
            "Version of the policy set in force.",
        )?;
        let audit_dropped = IntCounter::new(
            "palisade_proxy_audit_events_dropped_total",
            "Audit events dropped because the writer fell behind.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(handshakes.clone()))?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(tcp_connections.clone()))?;
        registry.register(Box::new(tcp_bytes.clone()))?;
        registry.register(Box::new(amqp_operations.clone()))?;
        registry.register(Box::new(provenance.clone()))?;
        registry.register(Box::new(amqp_bytes.clone()))?;
        registry.register(Box::new(amqp_channels.clone()))?;
        registry.register(Box::new(policy_version.clone()))?;
        registry.register(Box::new(audit_dropped.clone()))?;
        let spool = SpoolMetrics {
            written: IntCounter::new(
                "palisade_proxy_decision_records_written_total",
                "Decision-log lines (decisions and checkpoints) written to the spool.",
            )?,
            bytes: IntGauge::new(
                "palisade_proxy_decision_spool_bytes",
                "Bytes in the decision spool's segments.",
            )?,
            write_errors: IntCounter::new(
                "palisade_proxy_decision_write_errors_total",
                "Failed writes to the decision spool (retried; the decisions wait).",
            )?,
            shipped: IntCounter::new(
                "palisade_proxy_decision_records_shipped_total",
                "Decision-log lines the control plane acknowledged as stored (through a broker: that the broker confirmed).",
            )?,
            unshipped: IntGauge::new(
                "palisade_proxy_decision_records_unshipped",
                "Decision-log lines written to the spool and not yet acknowledged by the control plane.",
            )?,
            oldest_unshipped: IntGauge::new(
                "palisade_proxy_decision_oldest_unshipped_timestamp_seconds",
                "When the oldest decision-log line not yet shipped was written (Unix seconds; 0 when everything is shipped): its age is time() minus this.",
            )?,
            ship_errors: IntCounter::new(
                "palisade_proxy_decision_ship_errors_total",
                "Failed attempts to ship decision-log lines (retried with backoff).",
            )?,
            dropped: IntCounter::new(
                "palisade_proxy_decision_records_dropped_total",
                "Decisions not written because the spool was full (accounted for by a gap entry in the chain).",
            )?,
            refused: IntCounter::new(
                "palisade_proxy_decision_log_full_refusals_total",
                "Requests, connections and publishes refused because the decision spool was full (--decision-overflow refuse).",
            )?,
        };
        registry.register(Box::new(spool.written.clone()))?;
        registry.register(Box::new(spool.bytes.clone()))?;
        registry.register(Box::new(spool.write_errors.clone()))?;
        registry.register(Box::new(spool.shipped.clone()))?;
        registry.register(Box::new(spool.unshipped.clone()))?;
        registry.register(Box::new(spool.oldest_unshipped.clone()))?;
        registry.register(Box::new(spool.ship_errors.clone()))?;
        registry.register(Box::new(spool.dropped.clone()))?;
        registry.register(Box::new(spool.refused.clone()))?;
        Ok(Self {
            requests,
            duration,
            decisions,
            handshakes,
            open,
            tcp_connections,
            tcp_bytes,
            amqp_operations,
            provenance,
            amqp_bytes,
            amqp_channels,
            policy_version,
            audit_dropped,
            spool,
        })
    }

    pub fn request(
        &self,
        direction: &str,
        peer: &str,
        decision: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests
            .with_label_values(&[direction, peer, decision, class])
            .inc();
        self.duration
            .with_label_values(&[direction])
            .observe(elapsed.as_secs_f64());
    }

    pub fn decision(&self, d: &Decision) {
        let policy = match &d.basis {
            Basis::Policy { policy, .. } => policy.to_string(),
            _ => "none".to_owned(),
        };
        self.decisions
            .with_label_values(&[policy.as_str(), d.label()])
            .inc();
    }

    pub fn connection(&self, direction: &str, peer: &str, decision: &str) {
        self.tcp_connections
            .with_label_values(&[direction, peer, decision])
            .inc();
    }

    pub fn tcp_bytes(&self, direction: &str, sent: u64, received: u64) {
        self.tcp_bytes
            .with_label_values(&[direction, "sent"])
            .inc_by(sent);
        self.tcp_bytes
            .with_label_values(&[direction, "received"])
            .inc_by(received);
    }

    pub fn amqp_operation(&self, operation: &str, decision: &str) {
        self.amqp_operations
            .with_label_values(&[operation, decision])
            .inc();
    }

    pub fn provenance(&self, operation: &str, result: &str) {
        self.provenance
            .with_label_values(&[operation, result])
            .inc();
    }

    pub fn amqp_bytes(&self, flow: &str, bytes: usize) {
        self.amqp_bytes
            .with_label_values(&[flow])
            .inc_by(bytes as u64);
    }

    pub fn handshake(&self, direction: &str, result: &str) {
        self.handshakes
            .with_label_values(&[direction, result])
            .inc();
    }

    pub fn open_connection(&self, direction: &str) -> OpenConnection {
        let gauge = self.open.with_label_values(&[direction]);
        gauge.inc();
        OpenConnection(gauge)
    }
}
