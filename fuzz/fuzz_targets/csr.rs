//! Certificate signing requests as the CA receives them: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pem) = std::str::from_utf8(data) else {
        return;
    };
    let _ = palisade_control_plane::ca::parse_csr(pem);
});
