//! Request path normalization: the sidecar authorizes exactly the path it forwards.
//!
//! Path-based rules are only as good as the agreement between what the policy matched and
//! what the application later routes on. So the path is put in one canonical form before
//! matching, and that form is what is forwarded:
//! - the query and fragment are split off and never matched;
//! - percent-encoded *unreserved* characters (`A-Z a-z 0-9 - . _ ~`) are decoded, once;
//!   other encodings are kept, with upper-case hex;
//! - an encoded slash (`%2F`) or backslash (`%5C`), and a raw backslash, are refused unless
//!   [`PathOptions::allow_encoded_slashes`] is set (then they are kept as they are, never
//!   decoded), because applications disagree on whether they separate segments;
//! - NUL and control characters, raw or encoded, are refused, as are malformed escapes and
//!   bytes outside visible ASCII;
//! - escapes of bytes above 0x7F must spell valid UTF-8: overlong forms (`%C0%AF` for `/`,
//!   `%C0%AE` for `.`), surrogates and cut-off sequences are refused, since some decoders
//!   turn them into the ASCII they imitate; valid ones stay encoded;
//! - repeated slashes are merged and dot-segments removed (RFC 3986, section 5.2.4), after
//!   decoding, so `/%2e%2e/admin` cannot hide a `..`;
//! - path parameters: Tomcat, Jetty and Spring cut `;params` off every segment before
//!   routing, so `/public/..;/admin` serves `/admin` there. A dot-segment carrying
//!   parameters (`..;x`, `.;x`, `%2e%2e;`, `..%3B`) is refused: no reading of it is safe.
//!   Other parameters are forwarded as they are, and policies match the path with every
//!   segment's parameters removed ([`NormalizedTarget::policy_path`]), the reading of those
//!   servers, so `/admin;x` is matched as `/admin` and cannot slip past a DENY on it.

/// Why a request path was refused (the sidecar answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not an absolute path")]
    NotAbsolute,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains a character outside visible ASCII")]
    NonAscii,
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a malformed percent-encoding")]
    BadEscape,
    #[error("the path contains a percent-encoding that is not valid UTF-8 (overlong or cut off)")]
    InvalidUtf8,
    #[error("the path contains a dot-segment with parameters (such as ..;)")]
    DotSegmentParameters,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Keep `%2F`, `%5C` and `\` (undecoded) instead of refusing the request.
    pub allow_encoded_slashes: bool,
}

/// A request target split into its normalized path and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget {
    /// What policies match and what is forwarded.
    pub path: String,
    /// The query without its `?`, forwarded unchanged and never matched.
    pub query: Option<String>,
}

impl NormalizedTarget {
    /// The path policies match: [`Self::path`] with each segment's `;parameters` removed, as
    /// servers that strip them route it.
    pub fn policy_path(&self) -> std::borrow::Cow<'_, str> {
        strip_path_parameters(&self.path)
    }

    /// The request target to forward: the normalized path and the original query.
    pub fn to_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes an origin-form request target (`/path?query`).
pub fn normalize(target: &str, options: PathOptions) -> Result<NormalizedTarget, PathError> {
    // The fragment never reaches a server, and the query is not part of the path.
    let without_fragment = target.split('#').next().unwrap_or_default();
    let (raw_path, query) = match without_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (without_fragment, None),
    };
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_unreserved(raw_path.as_bytes(), options)?;
    if decoded.split('/').any(is_dot_segment_with_parameters) {
        return Err(PathError::DotSegmentParameters);
    }
    Ok(NormalizedTarget {
        path: remove_dot_segments(&decoded),
        query,
    })
}

/// Where a segment's parameters begin: at `;`, or at an encoded one (servers differ on
/// whether they cut before or after decoding, so both count).
fn parameters_start(segment: &str) -> Option<usize> {
    let raw = segment.find(';');
    let encoded = segment
        .as_bytes()
        .windows(3)
        .position(|w| w[0] == b'%' && w[1] == b'3' && w[2].eq_ignore_ascii_case(&b'b'));
    match (raw, encoded) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_dot_segment_with_parameters(segment: &str) -> bool {
    parameters_start(segment).is_some_and(|i| matches!(&segment[..i], "." | ".."))
}

/// `path` with every segment's `;parameters` removed.
pub fn strip_path_parameters(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains(';') {
        return std::borrow::Cow::Borrowed(path);
    }
    let stripped: Vec<&str> = path
        .split('/')
        .map(|segment| match segment.find(';') {
            Some(i) => &segment[..i],
            None => segment,
        })
        .collect();
    std::borrow::Cow::Owned(stripped.join("/"))
}

/// Decodes escapes of unreserved characters once and checks every byte.
fn decode_unreserved(raw: &[u8], options: PathOptions) -> Result<String, PathError> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (hi, lo) = match (raw.get(i + 1), raw.get(i + 2)) {
                    (Some(&h), Some(&l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let value = match (hex_value(hi), hex_value(lo)) {
                    (Some(h), Some(l)) => h * 16 + l,
                    _ => return Err(PathError::BadEscape),
                };
                if value < 0x20 || value == 0x7f {
                    return Err(PathError::ControlCharacter);
                }
                if value >= 0x80 {
                    // A run of escaped non-ASCII bytes must be whole, shortest-form UTF-8.
                    let mut bytes = Vec::new();
                    let mut j = i;
                    while let (Some(b'%'), Some(&h), Some(&l)) =
                        (raw.get(j), raw.get(j + 1), raw.get(j + 2))
                    {
                        match (hex_value(h), hex_value(l)) {
                            (Some(h), Some(l)) if h * 16 + l >= 0x80 => bytes.push(h * 16 + l),
                            _ => break,
                        }
                        j += 3;
                    }
                    if std::str::from_utf8(&bytes).is_err() {
                        return Err(PathError::InvalidUtf8);
                    }
                    for b in bytes {
                        out.push_str(&format!("%{b:02X}"));
                    }
                    i = j;
                    continue;
                }
                if value == b'/' || value == b'\\' {
                    if !options.allow_encoded_slashes {
                        return Err(PathError::EncodedSeparator);
                    }
                    out.push('%');
                    out.push(hi.to_ascii_uppercase() as char);
                    out.push(lo.to_ascii_uppercase() as char);
                } else if is_unreserved(value) {
                    out.push(value as char);
                } else {
                    out.push('%');
                    out.push(hi.to_ascii_uppercase() as char);
                    out.push(lo.to_ascii_uppercase() as char);
                }
                i += 3;
            }
            0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
            b'\\' if !options.allow_encoded_slashes => return Err(PathError::Backslash),
            0x80..=0xff | b' ' => return Err(PathError::NonAscii),
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Merges repeated slashes and removes `.` and `..` segments (RFC 3986, section 5.2.4); a
/// `..` above the root stays at the root.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing_slash =
        path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") || path == "/";
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p, PathOptions::default()).map(|t| t.path)
    }

    #[test]
    fn hostile_paths() {
        use PathError::*;
        let table: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/charge", Ok("/charge")),
            ("/charge/", Ok("/charge/")),
            ("//charge", Ok("/charge")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a/./b", Ok("/a/b")),
            ("/a/../admin", Ok("/admin")),
            ("/../../etc/passwd", Ok("/etc/passwd")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/.", Ok("/")),
            ("/..", Ok("/")),
            ("/%2e%2e/admin", Ok("/admin")),
            ("/public/%2E%2E/admin", Ok("/admin")),
            ("/public/.%2e/admin", Ok("/admin")),
            ("/%61dmin", Ok("/admin")),
            ("/%7Euser", Ok("/~user")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%2fb", Err(EncodedSeparator)),
            ("/a%2Fb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/a\\..\\admin", Err(Backslash)),
            ("/a%00b", Err(ControlCharacter)),
            ("/a%0d%0aSet-Cookie:x", Err(ControlCharacter)),
            ("/a\u{0}b", Err(ControlCharacter)),
            ("/a\tb", Err(ControlCharacter)),
            ("/a%7fb", Err(ControlCharacter)),
            ("/a%zzb", Err(BadEscape)),
            ("/a%2", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/caf\u{e9}", Err(NonAscii)),
            ("/a b", Err(NonAscii)),
            ("charge", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("http://evil/charge", Err(NotAbsolute)),
            // %25 decodes to '%', which is not unreserved: it stays encoded, so there is no
            // second round of decoding (%252e is not '.').
            ("/%252e%252e/admin", Ok("/%252e%252e/admin")),
            ("/a%2ab", Ok("/a%2Ab")),
            // Overlong and otherwise invalid UTF-8 escapes.
            ("/public/%C0%AF../admin", Err(InvalidUtf8)),
            ("/public/%C0%AE%C0%AE/admin", Err(InvalidUtf8)),
            ("/public/%e0%80%af", Err(InvalidUtf8)),
            ("/a%ED%A0%80", Err(InvalidUtf8)),
            ("/a%C3", Err(InvalidUtf8)),
            ("/a%C3x", Err(InvalidUtf8)),
            ("/a%FF", Err(InvalidUtf8)),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/%E2%82%AC%F0%9F%98%80", Ok("/%E2%82%AC%F0%9F%98%80")),
            // Dot-segments behind path parameters.
            ("/public/..;/admin", Err(DotSegmentParameters)),
            ("/public/%2e%2e;/admin", Err(DotSegmentParameters)),
            ("/public/..;x=1/admin", Err(DotSegmentParameters)),
            ("/public/.;/admin", Err(DotSegmentParameters)),
            ("/public/..%3B/admin", Err(DotSegmentParameters)),
            ("/public/..%3b/admin", Err(DotSegmentParameters)),
            ("/public/%2E.;jsessionid=1", Err(DotSegmentParameters)),
            ("/a;b/c", Ok("/a;b/c")),
            ("/cart;jsessionid=AB12", Ok("/cart;jsessionid=AB12")),
            ("/x/...;/y", Ok("/x/...;/y")),
        ];
        for (input, want) in table {
            let got = norm(input);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                want.clone(),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn query_and_fragment_are_never_part_of_the_path() {
        let t = normalize(
            "/charge/../refunds?amount=1/../../x#frag",
            PathOptions::default(),
        )
        .unwrap();
        assert_eq!(t.path, "/refunds");
        assert_eq!(t.query.as_deref(), Some("amount=1/../../x"));
        assert_eq!(t.to_target(), "/refunds?amount=1/../../x");
        let t = normalize("/a#?x", PathOptions::default()).unwrap();
        assert_eq!((t.path.as_str(), t.query), ("/a", None));
    }

    #[test]
    fn encoded_slashes_can_be_allowed_but_are_never_decoded() {
        let opts = PathOptions {
            allow_encoded_slashes: true,
        };
        assert_eq!(
            normalize("/files/a%2fb", opts).unwrap().path,
            "/files/a%2Fb"
        );
        assert_eq!(
            normalize("/files/a%5Cb", opts).unwrap().path,
            "/files/a%5Cb"
        );
        assert_eq!(normalize("/a\\b", opts).unwrap().path, "/a\\b");
        // A kept %2F does not create a segment that dot-removal could climb through.
        assert_eq!(
            normalize("/a%2F..%2Fadmin", opts).unwrap().path,
            "/a%2F..%2Fadmin"
        );
    }

    #[test]
    fn policies_match_the_path_without_its_parameters() {
        let t = normalize("/admin;x=1/users;v=2?q=;", PathOptions::default()).unwrap();
        assert_eq!(t.path, "/admin;x=1/users;v=2", "forwarded as written");
        assert_eq!(t.policy_path(), "/admin/users");
        assert_eq!(t.to_target(), "/admin;x=1/users;v=2?q=;");
        let plain = normalize("/admin", PathOptions::default()).unwrap();
        assert!(matches!(
            plain.policy_path(),
            std::borrow::Cow::Borrowed("/admin")
        ));
        assert_eq!(strip_path_parameters("/;a/b;"), "//b");
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for p in ["/a/../b/./c//d/", "/%61/%7e/x%20y", "/x/y/.."] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }
}
