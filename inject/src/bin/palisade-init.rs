//! `palisade-init`: the injected pod's init step. Installs the transparent-interception
//! rules ([`palisade_inject::iptables`]) in the pod's network namespace with
//! `iptables-restore --noflush` (only the `PALISADE_*` chains and two jumps are added;
//! nothing else of the pod's tables is touched). Needs `NET_ADMIN` and `NET_RAW`, which
//! only this short-lived container gets.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use palisade_inject::iptables::Interception;

/// Redirect the pod's TCP through its Palisade sidecar.
#[derive(Debug, Parser)]
#[command(name = "palisade-init", version, about, long_about = None)]
struct Args {
    /// The sidecar's uid: its own connections are never redirected.
    #[arg(long, default_value_t = palisade_inject::PROXY_UID as u32)]
    proxy_uid: u32,
    /// The sidecar's gid (also exempt).
    #[arg(long, default_value_t = palisade_inject::PROXY_UID as u32)]
    proxy_gid: u32,
    /// Where inbound TCP goes (the sidecar's mTLS port).
    #[arg(long, default_value_t = palisade_inject::INBOUND_PORT)]
    inbound_port: u16,
    /// Where outbound TCP goes (the sidecar's outbound port).
    #[arg(long, default_value_t = palisade_inject::OUTBOUND_PORT)]
    outbound_port: u16,
    /// The sidecar's admin port (probes, metrics): never redirected.
    #[arg(long, default_value_t = palisade_inject::ADMIN_PORT)]
    admin_port: u16,
    /// Inbound ports that reach the application directly (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone, IPv4 CIDRs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<String>,
    /// BROKER_PORT:PROXY_PORT: connections to the AMQP broker's port go to the sidecar's
    /// AMQP listener.
    #[arg(long, value_parser = parse_amqp)]
    amqp: Option<(u16, u16)>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

fn parse_amqp(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not BROKER_PORT:PROXY_PORT"))?;
    let port = |p: &str| p.parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    Ok((port(a)?, port(b)?))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let interception = Interception {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        exclude_inbound_ports: args.exclude_inbound_ports,
        exclude_outbound_ports: args.exclude_outbound_ports,
        exclude_outbound_cidrs: args.exclude_outbound_cidrs,
        amqp: args.amqp,
    };
    let rules = match interception.rules() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.dry_run {
        print!("{rules}");
        return ExitCode::SUCCESS;
    }
    match restore(&rules) {
        Ok(()) => {
            eprintln!("palisade-init: interception rules installed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: installing the rules failed: {e}\n--- rules ---\n{rules}");
            ExitCode::FAILURE
        }
    }
}

fn restore(rules: &str) -> Result<(), String> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running iptables-restore: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
