//! Transparent interception for real: `palisade-init` installs its rules in a network
//! namespace this test creates (with a veth pair to the test's own namespace), then
//! connections are made as a pod's application and its peers would make them, and the
//! sidecar's listeners recover where each was going with `SO_ORIGINAL_DST`
//! (`palisade_proxy::transparent::original_dst`).
//!
//! Needs root (network namespaces, iptables) and `ip` and `iptables-restore`, which
//! `scripts/services` installs; without root the test says so and does nothing.

#[path = "../../proxy/tests/support/netns.rs"]
mod netns;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use netns::PodNetwork;
use nix::sched::{CloneFlags, setns};
use palisade_proxy::transparent::original_dst;

/// Runs `f` on a thread that has entered the namespace (a thread's network namespace is
/// its own; the test's other threads stay where they are).
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        setns(File::open(path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// The next connection on `listener`, failing the test after 5 s (a connection that went
/// elsewhere must not hang it).
fn accept_within(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing reached {}",
                    listener.local_addr().unwrap()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Accepts one connection on `listener` and returns its original destination and the
/// line the client sent.
fn accept_one(listener: &TcpListener) -> (SocketAddr, String) {
    let mut stream = accept_within(listener);
    let dst = original_dst(&stream).unwrap();
    let mut line = String::new();
    stream.read_to_string(&mut line).unwrap();
    (dst, line)
}

fn send(to: SocketAddr, line: &str) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
    s.write_all(line.as_bytes()).unwrap();
}

#[test]
fn the_pod_network_sends_inbound_and_outbound_tcp_through_the_sidecar() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: network namespaces and iptables need root");
        return;
    }
    let net = PodNetwork::new("t", 213);
    let name = net.name.clone();
    // The init step, as the injected init container runs it.
    net.exec(
        &[
            env!("CARGO_BIN_EXE_palisade-init"),
            "--exclude-inbound-ports=9090",
            "--exclude-outbound-ports=5432",
            "--amqp=5672:15007",
        ],
        None,
    );

    // The sidecar's listeners inside the pod: inbound on all addresses, outbound on
    // loopback; and the application's metrics port, excluded from interception.
    let (inbound, outbound, metrics, amqp) = inside(&name, || {
        (
            TcpListener::bind("0.0.0.0:15006").unwrap(),
            TcpListener::bind("127.0.0.1:15001").unwrap(),
            TcpListener::bind("0.0.0.0:9090").unwrap(),
            TcpListener::bind("127.0.0.1:15007").unwrap(),
        )
    });

    // A peer outside the pod calls the application's port 8080: it reaches the sidecar's
    // inbound port, which learns the port that was asked for.
    let peer = std::thread::spawn(|| send("10.213.0.2:8080".parse().unwrap(), "inbound"));
    let (dst, line) = accept_one(&inbound);
    peer.join().unwrap();
    assert_eq!(
        (dst, line.as_str()),
        ("10.213.0.2:8080".parse().unwrap(), "inbound")
    );

    // The excluded port reaches the application directly.
    let peer = std::thread::spawn(|| send("10.213.0.2:9090".parse().unwrap(), "metrics"));
    let stream = accept_within(&metrics);
    peer.join().unwrap();
    assert_eq!(
        stream.local_addr().unwrap().port(),
        9090,
        "not redirected to the sidecar"
    );

    // The application calls a service address (any IP, any port): it reaches the
    // sidecar's outbound port, which learns the original destination.
    let app = std::thread::spawn({
        let name = name.clone();
        move || {
            inside(&name, || {
                send("10.96.12.34:80".parse().unwrap(), "outbound")
            })
        }
    });
    let (dst, line) = accept_one(&outbound);
    app.join().unwrap();
    assert_eq!(
        (dst, line.as_str()),
        ("10.96.12.34:80".parse().unwrap(), "outbound")
    );

    // The application connects to the broker (palisade.dev/amqp-upstream): it reaches the
    // sidecar's AMQP proxy instead, whatever address it used.
    let app = std::thread::spawn({
        let name = name.clone();
        move || inside(&name, || send("10.96.20.5:5672".parse().unwrap(), "AMQP"))
    });
    let (dst, line) = accept_one(&amqp);
    app.join().unwrap();
    assert_eq!(
        (dst, line.as_str()),
        ("10.96.20.5:5672".parse().unwrap(), "AMQP")
    );

    // An excluded destination port leaves the pod untouched: a database outside it (in
    // the test's own namespace) is reached directly.
    let database = TcpListener::bind("10.213.0.1:5432").unwrap();
    let app = std::thread::spawn({
        let name = name.clone();
        move || inside(&name, || send("10.213.0.1:5432".parse().unwrap(), "db"))
    });
    let mut stream = accept_within(&database);
    let mut line = String::new();
    stream.read_to_string(&mut line).unwrap();
    app.join().unwrap();
    assert_eq!(line, "db");
    drop(net);
}
