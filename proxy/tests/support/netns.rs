//! A pod network for interception tests: a network namespace joined to the test's own by a
//! veth pair (`10.<net>.0.1` outside, `10.<net>.0.2` inside, the outside as default
//! route), removed when dropped. Needs root. Shared with the inject crate's tests.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs a command (with `stdin` piped in, if any); fails the test with its stderr.
pub fn run(cmd: &[&str], stdin: Option<&str>) {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct PodNetwork {
    pub name: String,
    /// The pod's address, and the address of the test's side of the link.
    pub pod_ip: String,
    pub host_ip: String,
}

impl PodNetwork {
    /// `net` picks the subnet (10.`net`.0.0/30) so tests running at once do not collide.
    pub fn new(tag: &str, net: u8) -> Self {
        let id = std::process::id();
        let name = format!("palisade-{tag}{id}");
        let (host_if, pod_if) = (
            format!("{tag}h{}", id % 100_000),
            format!("{tag}p{}", id % 100_000),
        );
        let (host_ip, pod_ip) = (format!("10.{net}.0.1"), format!("10.{net}.0.2"));
        // A run that was killed leaves its namespace (and the subnet's address) behind.
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for stale in String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("palisade-{tag}")))
        {
            let _ = Command::new("ip").args(["netns", "del", stale]).status();
        }
        run(&["ip", "netns", "add", &name], None);
        let network = PodNetwork {
            name: name.clone(),
            pod_ip: pod_ip.clone(),
            host_ip: host_ip.clone(),
        };
        run(&["ip", "-n", &name, "link", "set", "lo", "up"], None);
        run(
            &[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns",
                &name,
            ],
            None,
        );
        run(
            &[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &host_if,
            ],
            None,
        );
        run(&["ip", "link", "set", &host_if, "up"], None);
        run(
            &[
                "ip",
                "-n",
                &name,
                "addr",
                "add",
                &format!("{pod_ip}/30"),
                "dev",
                &pod_if,
            ],
            None,
        );
        run(&["ip", "-n", &name, "link", "set", &pod_if, "up"], None);
        run(
            &[
                "ip", "-n", &name, "route", "add", "default", "via", &host_ip,
            ],
            None,
        );
        network
    }

    /// For `setns`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &[&str], stdin: Option<&str>) {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(cmd);
        run(&full, stdin);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
