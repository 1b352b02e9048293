//! Broker URLs, `amqp://USER:PASSWORD@HOST:PORT/VHOST` or `amqps://…`, read one way by the
//! sidecar (which logs in there) and the injector (which redirects a pod's connections for
//! the broker's port to the sidecar): were they to disagree on the port, the pod's
//! publishes would bypass the sidecar or never reach the broker.
//!
//! The port defaults to the scheme's (5672, or 5671 for `amqps`); the user and password
//! to RabbitMQ's `guest`; the vhost (percent-encoded, `%2f` for `/`) to `/`. An IPv6 host
//! is written in brackets. Errors never quote the URL, which may hold a password.

/// A parsed broker URL. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl {
    /// `amqps://`: TLS to the broker.
    pub tls: bool,
    /// As written (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
    pub vhost: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpUrl")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl AmqpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("amqp://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("amqps://") {
            (r, true)
        } else {
            return Err("is not an amqp:// or amqps:// URL".into());
        };
        let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                (decode(user, "user name")?, decode(pass, "password")?)
            }
            None => ("guest".to_owned(), "guest".to_owned()),
        };
        // The port follows the last colon, unless that colon is inside an IPv6 address.
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (host_port, None),
        };
        if host.is_empty() {
            return Err("names no broker host".into());
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("has a bad port {p:?}"))?,
            None if tls => 5671,
            None => 5672,
        };
        let vhost = if vhost.is_empty() {
            "/".to_owned()
        } else {
            decode(vhost, "vhost")?
        };
        Ok(AmqpUrl {
            tls,
            host: host.to_owned(),
            port,
            vhost,
            username,
            password,
        })
    }

    /// `host:port`, to connect to.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Percent-decoding that refuses a malformed escape rather than keeping it as text (a
/// password with a stray `%` would otherwise be sent as something else than meant).
fn decode(s: &str, what: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let byte = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("has bad percent-encoding in its {what}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("has a {what} that is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_host_port_and_vhost() {
        let u = AmqpUrl::parse("amqp://app:s%3Acret@rabbit:5673/%2f").unwrap();
        assert_eq!(
            (u.tls, u.addr().as_str(), u.vhost.as_str()),
            (false, "rabbit:5673", "/")
        );
        assert_eq!(
            (u.username.as_str(), u.password.as_str()),
            ("app", "s:cret")
        );
        assert!(!format!("{u:?}").contains("s:cret"), "no password in Debug");
        let u = AmqpUrl::parse("amqp://rabbit/shop").unwrap();
        assert_eq!(
            (u.addr().as_str(), u.vhost.as_str(), u.username.as_str()),
            ("rabbit:5672", "shop", "guest")
        );
    }

    #[test]
    fn default_ports_and_ipv6_hosts() {
        for (url, addr) in [
            ("amqps://rabbit.example", "rabbit.example:5671"),
            ("amqp://[::1]/%2f", "[::1]:5672"),
            ("amqps://u@[fd00::7]:5675/", "[fd00::7]:5675"),
        ] {
            assert_eq!(AmqpUrl::parse(url).unwrap().addr(), addr, "{url}");
        }
        assert!(AmqpUrl::parse("amqps://x").unwrap().tls);
    }

    #[test]
    fn what_is_refused_is_said_without_the_url() {
        for (url, why) in [
            ("http://rabbit", "is not an amqp:// or amqps:// URL"),
            ("amqp://user:pw@/vh", "names no broker host"),
            ("amqp://rabbit:0/", "has a bad port \"0\""),
            ("amqp://rabbit:http/", "has a bad port \"http\""),
            (
                "amqp://u:p%zz@rabbit/",
                "has bad percent-encoding in its password",
            ),
        ] {
            let e = AmqpUrl::parse(url).unwrap_err();
            assert_eq!(e, why, "{url}");
            assert!(!e.contains("p%zz") && !e.contains(":pw"));
        }
    }
}
