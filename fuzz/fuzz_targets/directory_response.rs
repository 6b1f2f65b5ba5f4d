//! The client's reader of the node's answers and presence pushes, and the
//! check of the records they carry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::codec;
use messenger_proto::directory::{MAX_FRAME, Reply, Response};

fuzz_target!(|data: &[u8]| {
    let mut reader = futures::io::Cursor::new(data);
    while let Ok(Some(response)) =
        futures::executor::block_on(codec::read_frame::<_, Response>(&mut reader, MAX_FRAME))
    {
        if let Reply::Resolved(resolution) | Reply::Presence(resolution) = &response.reply {
            let _ = resolution.verified_record(1_700_000_000_000);
        }
        let again: Response = codec::from_cbor(&codec::to_cbor(&response)).expect("round trip");
        assert_eq!(again, response);
    }
});
