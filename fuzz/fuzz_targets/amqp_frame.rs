//! AMQP frames from an application: the codec, the raw field-table walk, the routing-type
//! checks and the authorization table must never panic, and every method the table
//! authorizes names at least one operation.
#![no_main]

use amq_protocol::frame::{AMQPFrame, parse_frame};
use libfuzzer_sys::fuzz_target;
use palisade_proxy::amqp::tables::check_frame;
use palisade_proxy::amqp::{check_routing_types, operations};

fuzz_target!(|data: &[u8]| {
    let _ = check_frame(data);
    let Ok((_, frame)) = parse_frame(data) else {
        return;
    };
    let _ = check_routing_types(&frame);
    if let AMQPFrame::Method(_, method) = &frame
        && let Some((ops, _ids)) = operations(method)
    {
        assert!(!ops.is_empty(), "an authorized method names what it does");
        for op in ops {
            assert!(!op.operation.is_empty());
        }
    }
});
