//! The key file reader: whatever is on disk either loads as a key that
//! signs and verifies, or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::identity::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = Identity::decode(data) {
        // A loaded key re-encodes to a file that loads as the same key.
        let again = Identity::decode(identity.encode().as_bytes()).expect("round trip");
        assert_eq!(again.peer_id(), identity.peer_id());
    }
});
