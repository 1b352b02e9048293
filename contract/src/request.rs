//! What the sidecar checks in an HTTP request before any policy sees it, written once so
//! that `palisade simulate` judges a request exactly as the sidecar does (it used to repeat
//! these checks, and said so in a comment).
//!
//! - The method must be an upper-case token: methods are case-sensitive, and a lower-case
//!   `get` is not `GET`, so it would slip past rules written for `GET`.
//! - The path is normalized ([`crate::path`]): the one reading that is authorized and
//!   forwarded; what cannot be normalized safely is refused.
//!
//! Both refusals are 400 at the sidecar.

use crate::path::{NormalizedTarget, PathError, PathOptions, normalize};

/// Why a request is refused before policies are evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("method {0:?} is not an upper-case token")]
    BadMethod(String),
    #[error(transparent)]
    BadPath(#[from] PathError),
}

/// Checks `method` and normalizes `target` (origin form, `/path?query`).
pub fn check_request(
    method: &str,
    target: &str,
    options: PathOptions,
) -> Result<NormalizedTarget, RequestError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::BadMethod(method.chars().take(32).collect()));
    }
    Ok(normalize(target, options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_paths_as_the_sidecar_refuses_them() {
        let o = PathOptions::default();
        assert_eq!(check_request("GET", "/a/../b", o).unwrap().path, "/b");
        for method in ["get", "Get", "", "GET ", "G-T"] {
            assert!(
                matches!(
                    check_request(method, "/", o),
                    Err(RequestError::BadMethod(_))
                ),
                "{method:?}"
            );
        }
        assert_eq!(
            check_request("POST", "/a%00", o),
            Err(RequestError::BadPath(PathError::ControlCharacter))
        );
    }
}
