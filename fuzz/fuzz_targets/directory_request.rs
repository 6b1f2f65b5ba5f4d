//! The node's reader of directory requests: bytes off the network, through
//! the length-prefixed frame reader, into a request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::codec;
use messenger_proto::directory::{MAX_FRAME, Request};

fuzz_target!(|data: &[u8]| {
    let mut reader = futures::io::Cursor::new(data);
    // Every frame in the input, as a session would read them.
    while let Ok(Some(request)) =
        futures::executor::block_on(codec::read_frame::<_, Request>(&mut reader, MAX_FRAME))
    {
        // What decodes re-encodes to something that decodes the same.
        let again: Request = codec::from_cbor(&codec::to_cbor(&request)).expect("round trip");
        assert_eq!(again, request);
    }
});
