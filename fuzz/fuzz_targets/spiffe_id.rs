//! SPIFFE IDs: parsing never panics, and what it accepts prints back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_contract::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        let again = SpiffeId::parse(id.as_str()).expect("a parsed ID parses");
        assert_eq!(again, id);
        let _ = id.namespace_and_service_account();
    }
});
