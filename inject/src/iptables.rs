//! Transparent interception: the iptables rules the pod's init step installs (with
//! `iptables-restore`, in the pod's network namespace) so that the application needs no
//! proxy settings.
//!
//! - **Inbound**: TCP arriving for any port of the pod is redirected to the sidecar's
//!   inbound port, which admits only mesh peers over mTLS; except the sidecar's own ports
//!   (its inbound port and its admin port, where the kubelet's rewritten probes and
//!   Prometheus come) and the ports excluded by configuration (e.g. probes the injector
//!   could not rewrite).
//! - **Outbound**: TCP the application opens is redirected to the sidecar's outbound
//!   port, which recovers the original destination with `SO_ORIGINAL_DST`; except the
//!   sidecar's own traffic (matched by its uid and gid, so its connections to peers and
//!   to the control plane are not looped back to itself), loopback, and excluded ports and
//!   CIDRs. Connections to the AMQP broker's port go to the AMQP proxy instead.
//!
//! The rules live in chains of their own (`PALISADE_*`), which makes them easy to find
//! and to remove, as Istio's `ISTIO_*` chains are.

/// What to redirect where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interception {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    /// Inbound ports left alone (reach the application directly).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destinations left alone (e.g. the node's metadata service), `a.b.c.d/n`.
    pub exclude_outbound_cidrs: Vec<String>,
    /// `(broker port, AMQP proxy port)`: connections to the broker's port go to the
    /// sidecar's AMQP listener.
    pub amqp: Option<(u16, u16)>,
}

impl Default for Interception {
    fn default() -> Self {
        Interception {
            proxy_uid: crate::PROXY_UID as u32,
            proxy_gid: crate::PROXY_UID as u32,
            inbound_port: crate::INBOUND_PORT,
            outbound_port: crate::OUTBOUND_PORT,
            admin_port: crate::ADMIN_PORT,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            amqp: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{0:?} is not an IPv4 CIDR (a.b.c.d/n)")]
    BadCidr(String),
}

fn check_cidr(cidr: &str) -> Result<(), RuleError> {
    let bad = || RuleError::BadCidr(cidr.to_owned());
    let (addr, len) = cidr.split_once('/').ok_or_else(bad)?;
    addr.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

impl Interception {
    /// Whether these settings can become rules (every CIDR well-formed).
    pub fn check(&self) -> Result<(), RuleError> {
        self.exclude_outbound_cidrs
            .iter()
            .try_for_each(|c| check_cidr(c))
    }

    /// The `iptables-restore` input (the nat table only; the rest of the pod's tables are
    /// not touched).
    pub fn rules(&self) -> Result<String, RuleError> {
        self.check()?;
        let mut r = String::new();
        let mut line = |s: String| {
            r.push_str(&s);
            r.push('\n');
        };
        line("*nat".into());
        for chain in [
            "PALISADE_INBOUND",
            "PALISADE_IN_REDIRECT",
            "PALISADE_OUTPUT",
            "PALISADE_REDIRECT",
        ] {
            line(format!(":{chain} - [0:0]"));
        }
        line(format!(
            "-A PALISADE_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        ));
        line(format!(
            "-A PALISADE_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        ));
        // Inbound.
        line("-A PREROUTING -p tcp -j PALISADE_INBOUND".into());
        let mut inbound_kept = vec![self.inbound_port, self.admin_port];
        inbound_kept.extend(&self.exclude_inbound_ports);
        for port in dedup(inbound_kept) {
            line(format!(
                "-A PALISADE_INBOUND -p tcp --dport {port} -j RETURN"
            ));
        }
        line("-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT".into());
        // Outbound.
        line("-A OUTPUT -p tcp -j PALISADE_OUTPUT".into());
        line(format!(
            "-A PALISADE_OUTPUT -m owner --uid-owner {} -j RETURN",
            self.proxy_uid
        ));
        line(format!(
            "-A PALISADE_OUTPUT -m owner --gid-owner {} -j RETURN",
            self.proxy_gid
        ));
        line("-A PALISADE_OUTPUT -o lo -j RETURN".into());
        line("-A PALISADE_OUTPUT -d 127.0.0.0/8 -j RETURN".into());
        for cidr in &self.exclude_outbound_cidrs {
            line(format!("-A PALISADE_OUTPUT -d {cidr} -j RETURN"));
        }
        for port in dedup(self.exclude_outbound_ports.clone()) {
            line(format!(
                "-A PALISADE_OUTPUT -p tcp --dport {port} -j RETURN"
            ));
        }
        if let Some((broker, proxy)) = self.amqp {
            line(format!(
                "-A PALISADE_OUTPUT -p tcp --dport {broker} -j REDIRECT --to-ports {proxy}"
            ));
        }
        line("-A PALISADE_OUTPUT -j PALISADE_REDIRECT".into());
        line("COMMIT".into());
        Ok(r)
    }

    /// The init container's arguments for these settings (what `palisade-init` parses).
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--proxy-uid={}", self.proxy_uid),
            format!("--proxy-gid={}", self.proxy_gid),
            format!("--inbound-port={}", self.inbound_port),
            format!("--outbound-port={}", self.outbound_port),
            format!("--admin-port={}", self.admin_port),
        ];
        let list = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        if !self.exclude_inbound_ports.is_empty() {
            a.push(format!(
                "--exclude-inbound-ports={}",
                list(&self.exclude_inbound_ports)
            ));
        }
        if !self.exclude_outbound_ports.is_empty() {
            a.push(format!(
                "--exclude-outbound-ports={}",
                list(&self.exclude_outbound_ports)
            ));
        }
        if !self.exclude_outbound_cidrs.is_empty() {
            a.push(format!(
                "--exclude-outbound-cidrs={}",
                self.exclude_outbound_cidrs.join(",")
            ));
        }
        if let Some((broker, proxy)) = self.amqp {
            a.push(format!("--amqp={broker}:{proxy}"));
        }
        a
    }
}

fn dedup(mut v: Vec<u16>) -> Vec<u16> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(*p));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_redirect_everything_but_the_sidecar_itself() {
        let rules = Interception::default().rules().unwrap();
        let expected = "\
*nat
:PALISADE_INBOUND - [0:0]
:PALISADE_IN_REDIRECT - [0:0]
:PALISADE_OUTPUT - [0:0]
:PALISADE_REDIRECT - [0:0]
-A PALISADE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PALISADE_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j PALISADE_INBOUND
-A PALISADE_INBOUND -p tcp --dport 15006 -j RETURN
-A PALISADE_INBOUND -p tcp --dport 15090 -j RETURN
-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT
-A OUTPUT -p tcp -j PALISADE_OUTPUT
-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A PALISADE_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A PALISADE_OUTPUT -o lo -j RETURN
-A PALISADE_OUTPUT -d 127.0.0.0/8 -j RETURN
-A PALISADE_OUTPUT -j PALISADE_REDIRECT
COMMIT
";
        assert_eq!(rules, expected);
    }

    #[test]
    fn exclusions_and_amqp_come_before_the_catch_all() {
        let i = Interception {
            exclude_inbound_ports: vec![9090, 15090, 9090],
            exclude_outbound_ports: vec![5432],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into()],
            amqp: Some((5672, 15672)),
            ..Interception::default()
        };
        let rules = i.rules().unwrap();
        let lines: Vec<&str> = rules.lines().collect();
        let at = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("{l} missing from\n{rules}"))
        };
        // Each port once, even when listed twice or already kept.
        assert_eq!(rules.matches("--dport 9090 -j RETURN").count(), 1);
        assert_eq!(rules.matches("--dport 15090 -j RETURN").count(), 1);
        assert!(
            at("-A PALISADE_INBOUND -p tcp --dport 9090 -j RETURN")
                < at("-A PALISADE_INBOUND -p tcp -j PALISADE_IN_REDIRECT")
        );
        let catch_all = at("-A PALISADE_OUTPUT -j PALISADE_REDIRECT");
        assert!(at("-A PALISADE_OUTPUT -d 169.254.169.254/32 -j RETURN") < catch_all);
        assert!(at("-A PALISADE_OUTPUT -p tcp --dport 5432 -j RETURN") < catch_all);
        assert!(
            at("-A PALISADE_OUTPUT -p tcp --dport 5672 -j REDIRECT --to-ports 15672") < catch_all
        );
        // The sidecar's own traffic is never redirected, whatever the exclusions.
        assert!(at("-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN") < catch_all);
        assert_eq!(
            i.args(),
            [
                "--proxy-uid=1337",
                "--proxy-gid=1337",
                "--inbound-port=15006",
                "--outbound-port=15001",
                "--admin-port=15090",
                "--exclude-inbound-ports=9090,15090,9090",
                "--exclude-outbound-ports=5432",
                "--exclude-outbound-cidrs=169.254.169.254/32",
                "--amqp=5672:15672",
            ]
        );
    }

    #[test]
    fn a_bad_cidr_is_refused_not_written() {
        for bad in ["10.0.0.0", "10.0.0.0/33", "::1/128", "10.0.0/8; rm", ""] {
            let i = Interception {
                exclude_outbound_cidrs: vec![bad.into()],
                ..Interception::default()
            };
            assert_eq!(i.rules(), Err(RuleError::BadCidr(bad.into())), "{bad}");
        }
    }
}
