//! Feeds arbitrary bytes to the frame decoder as a peer could: it must return an error or a message,
//! never panic or allocate past the frame limit.
#![no_main]

use corral_proto::wire::{AgentMessage, CoordinatorMessage, LogFrame, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame::<AgentMessage>(data);
    let _ = decode_frame::<CoordinatorMessage>(data);
    let _ = decode_frame::<LogFrame>(data);
});
