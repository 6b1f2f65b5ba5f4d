//! A signed registration record, as the node receives it in a register
//! request and a client receives it in a resolution: decode, verify, check
//! limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::codec;
use messenger_proto::record::SignedRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = codec::from_cbor::<SignedRecord>(data) {
        if let Ok(record) = signed.open() {
            // Whatever opens is within the limits the node enforces.
            assert!(record.check_limits().is_ok());
        }
    }
});
