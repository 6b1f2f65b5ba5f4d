//! Chat frames as a receiver reads them from a peer: frame reader, then
//! the message's signature and fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_proto::chat::{self, ChatFrame, MAX_FRAME, Message};
use messenger_proto::codec;
use messenger_proto::identity::Identity;
use messenger_proto::signed::MESSAGE_CONTEXT;

fuzz_target!(|data: &[u8]| {
    let key = Identity::from_seed([7; 32]).verifying_key();
    let mut reader = futures::io::Cursor::new(data);
    while let Ok(Some(frame)) =
        futures::executor::block_on(codec::read_frame::<_, ChatFrame>(&mut reader, MAX_FRAME))
    {
        if let ChatFrame::Message(signed) = &frame {
            let _ = signed.open::<Message>(MESSAGE_CONTEXT, &key);
            if let Ok(message) = signed.decode_unverified::<Message>() {
                let _ = chat::check_text(&message.text);
            }
        }
    }
});
