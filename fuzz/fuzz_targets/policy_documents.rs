//! Policy documents, YAML or JSON: parsing and validation never panic, and documents that
//! pass compile into a policy set and an authenticator.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_contract::documents::parse_documents;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_documents(text);
});
