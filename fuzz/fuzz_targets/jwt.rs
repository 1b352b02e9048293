//! JWTs: the header and claim readers never panic, and no input verifies against a key that
//! did not sign it (the JWKS here has a public key whose private half nobody has).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_contract::jwt::{Jwks, decode_header, unverified_issuer};

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","use":"sig",
  "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
  "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = decode_header(token);
    let _ = unverified_issuer(token);
    let jwks = Jwks::from_json(JWKS.as_bytes()).expect("the fixed JWKS loads");
    let verified = jwks.verify::<serde_json::Value>(token, "https://idp.example", &["aud"]);
    assert!(verified.is_err(), "{token:?} verified without its key");
});
