//! Any byte string, cut anywhere, decodes to messages or an error; never a panic. Every
//! message that decodes re-encodes to bytes that decode to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_core::wire::FrameDecoder;

fuzz_target!(|input: (Vec<u8>, u8)| {
    let (bytes, cut) = input;
    let cut = usize::from(cut).max(1);
    let mut decoder = FrameDecoder::new();
    for piece in bytes.chunks(cut) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(message)) => {
                    let mut again = BytesMut::new();
                    message.encode(&mut again);
                    let mut check = FrameDecoder::new();
                    check.extend(&again);
                    assert_eq!(check.next_frame().ok().flatten().as_ref(), Some(&message));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
