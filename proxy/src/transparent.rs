//! Transparent interception, the sidecar's side: where a redirected connection was going.
//!
//! The pod's init step (`palisade-init`) redirects TCP with iptables `REDIRECT`; the
//! kernel keeps the destination the application (or the peer) asked for, and
//! `SO_ORIGINAL_DST` returns it on the accepted socket. nix wraps the `getsockopt`, so no
//! `unsafe` is needed here.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt};

/// The destination a redirected connection was addressed to (IPv4 or IPv6). For a
/// connection that was not redirected, the kernel answers with the socket's own local
/// address (IPv4) or an error (`ENOENT`).
pub fn original_dst(socket: &impl AsFd) -> io::Result<SocketAddr> {
    match getsockopt(socket, sockopt::OriginalDst) {
        Ok(v4) => Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
            u16::from_be(v4.sin_port),
        ))),
        Err(v4_error) => match getsockopt(socket, sockopt::Ip6tOriginalDst) {
            Ok(v6) => Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            ))),
            Err(_) => Err(io::Error::from(v4_error)),
        },
    }
}
