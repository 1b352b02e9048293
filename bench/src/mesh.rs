//! Processes under test: starting them, waiting for them, and reading what they cost
//! (resident memory and CPU time from /proc, for a process and its children, since nginx
//! does its work in worker processes).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Child processes, stopped when dropped: SIGTERM first, SIGKILL after 3 s. (SIGKILL alone
/// left nginx's workers running, orphaned and still listening, into the next run.)
pub struct Procs(pub Vec<(String, Child)>);

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        for (_, c) in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Procs {
    /// The process id of the child started as `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }

    pub fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<u32> {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let pid = child.id();
        self.0.push((name.to_owned(), child));
        Ok(pid)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

async fn get_status(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Some(status)
}

pub async fn wait_status(
    addr: SocketAddr,
    host: &str,
    path: &str,
    want: u16,
) -> anyhow::Result<()> {
    for _ in 0..200 {
        if get_status(addr, host, path).await == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{addr}{path} never answered {want}")
}

/// A process and its direct children (nginx's master and workers).
fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if stat_fields(child)
                .get(1)
                .and_then(|p| p.parse::<u32>().ok())
                == Some(pid)
            {
                all.push(child);
            }
        }
    }
    all
}

/// The fields of /proc/PID/stat after the command name (which may hold spaces): state is
/// index 0, ppid 1, utime 11, stime 12.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// (resident KiB now, peak resident KiB) of a process and its children, summed.
pub fn memory(pid: u32) -> (u64, u64) {
    family(pid).into_iter().fold((0, 0), |(rss, hwm), p| {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (rss + field("VmRSS:"), hwm + field("VmHWM:"))
    })
}

/// CPU seconds (user + system) a process and its children have used.
pub fn cpu_seconds(pid: u32) -> f64 {
    family(pid)
        .into_iter()
        .map(|p| {
            let fields = stat_fields(p);
            let ticks = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            (ticks(11) + ticks(12)) / 100.0
        })
        .sum()
}
