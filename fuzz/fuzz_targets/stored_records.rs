//! Values read back from the stores: the client's contacts and messages,
//! the node's claims. The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger::store::{Contact, StoredMessage, StoredRecord, decode_record as decode};

fuzz_target!(|data: &[u8]| {
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let _ = decode::<Contact>(bytes);
        }
        1 => {
            let _ = decode::<StoredMessage>(bytes);
        }
        2 => {
            let _ = decode::<StoredRecord>(bytes);
        }
        _ => {
            let _ = rendezvous::store::decode("name", bytes);
        }
    }
});
