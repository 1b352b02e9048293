//! Palisade's benchmark harness: Palisade against no proxy and against an nginx pair doing
//! the same mTLS job, on one machine, in one run.
//!
//! `palisade-bench run` starts the real binaries (control plane, sidecars, nginx, an
//! upstream application) on loopback, drives them with its own load generator
//! ([`load`]), and writes a results table (Markdown and JSON) with the ratios to direct
//! and to nginx, and the targets met or missed. Scenarios:
//! 1. HTTP/1.1 with 1 KiB responses: direct (client -> app), Palisade (client -> outbound
//!    sidecar -> mTLS -> inbound sidecar evaluating an ALLOW policy -> app), nginx (the
//!    same two hops, [`nginx`]): closed-loop throughput and open-loop latency percentiles.
//! 2. The same with HTTP/2 between the client and the first hop.
//! 3. AMQP publishes of 1 KiB messages, direct and through a sidecar with signing on and
//!    off, with and without publisher confirms ([`amqp`]).
//! 4. Footprint: resident memory idle and at peak during scenario 1, CPU seconds per
//!    10,000 requests, for the sidecars and the nginx pair.
//! 5. Policy evaluation: time per decision with 10, 1,000 and 100,000 rules in the mesh.
//! 6. Certificate issuance: CSRs signed per second ([`issuance`]).
//! 7. Policy propagation: time from an API change until 100 and 1,000 simulated sidecars
//!    (long polls on the configuration endpoint, over mTLS with a real sidecar's
//!    certificate) have received it.
//!
//! `--smoke` runs each scenario for a moment, so CI keeps the harness working; the numbers
//! of a smoke run mean nothing.

mod amqp;
mod app;
mod callgrind;
mod issuance;
mod load;
mod mesh;
mod nginx;
mod run;

use crate::app::app;
use crate::run::{Settings, run};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[derive(Debug, Parser)]
#[command(name = "palisade-bench", about = "Palisade's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The upstream application: 1 KiB responses over HTTP/1.1 or HTTP/2 (prior knowledge).
    App {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Run every scenario and write the results.
    Run(Settings),
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match Cli::parse().command {
        Cmd::App { listen } => runtime.block_on(app(listen)),
        Cmd::Run(settings) => runtime.block_on(run(settings)),
    }
}
