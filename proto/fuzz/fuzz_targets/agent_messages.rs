//! The agent's view of the link: arbitrary bytes as a stream of the coordinator's frames, read with
//! the function the agent reads them with (`wire::io::read_frame`, one frame after another, as on a
//! QUIC stream), for each kind of stream it reads — the control stream and the first frame of a
//! tunnel (`CoordinatorMessage`), an exec stream (`ExecFrame`) — and the log and tunnel streams'
//! frames the other side reads (`LogFrame`, `TunnelReply`). Each read returns a message, the clean
//! end, or an error: never a panic, never an allocation past the frame limit.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use corral_proto::wire::io::read_frame;
use corral_proto::wire::{CoordinatorMessage, ExecFrame, LogFrame, TunnelReply};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

/// Reads frames of `T` from `data` until the end or the first error.
fn stream<T: DeserializeOwned>(mut data: &[u8]) {
    let mut cx = Context::from_waker(Waker::noop());
    // Each frame takes at least its 10-byte header: the loop ends.
    loop {
        let read = pin!(read_frame::<T, _>(&mut data));
        match read.poll(&mut cx) {
            Poll::Ready(Ok(Some(_))) => {}
            Poll::Ready(Ok(None) | Err(_)) => return,
            // A byte slice is always ready: a read that waits would be a bug in the reader.
            Poll::Pending => panic!("read_frame waited on a byte slice"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    stream::<CoordinatorMessage>(data);
    stream::<ExecFrame>(data);
    stream::<LogFrame>(data);
    stream::<TunnelReply>(data);
});
