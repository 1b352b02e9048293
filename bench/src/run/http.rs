//! Scenarios 1, 2 and 4: HTTP over each path (direct, Palisade, nginx) and the footprint.

use std::net::SocketAddr;

/// One path of the HTTP scenarios: where the client connects for each protocol, and the
/// processes whose CPU and memory it costs.
pub(crate) struct HttpPath {
    pub(crate) name: &'static str,
    pub(crate) key: &'static str,
    pub(crate) http1: SocketAddr,
    pub(crate) http2: SocketAddr,
    pub(crate) host: &'static str,
    /// (label, pid) of each proxy on the path.
    pub(crate) proxies: Vec<(&'static str, u32)>,
}

/// What one HTTP path measured.
#[derive(Clone, Copy)]
pub(crate) struct HttpFigures {
    /// Median of the rounds.
    pub(crate) rps: f64,
    pub(crate) p99: f64,
    pub(crate) cpu_per_10k: f64,
    /// Lowest and highest round.
    pub(crate) range: (f64, f64),
}
