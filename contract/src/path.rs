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
//! - repeated slashes are merged and dot-segments removed (RFC 3986, section 5.2.4), after
//!   decoding, so `/%2e%2e/admin` cannot hide a `..`.

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
    Ok(NormalizedTarget {
        path: remove_dot_segments(&decoded),
        query,
    })
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
    fn normalizing_twice_changes_nothing() {
        for p in ["/a/../b/./c//d/", "/%61/%7e/x%20y", "/x/y/.."] {
            let once = norm(p).unwrap();
            assert_eq!(norm(&once).unwrap(), once, "{p}");
        }
    }
}
