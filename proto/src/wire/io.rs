//! Reading and writing frames on async byte streams (QUIC streams in practice).

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameError, HEADER_LEN, decode_header, decode_payload, encode};

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream i/o failed")]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` when the stream ended cleanly at a frame boundary.
pub async fn read_frame<T, R>(r: &mut R) -> Result<Option<T>, IoError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = r.read(&mut header[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(IoError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    // The length is bounded by decode_header, and the buffer grows with the bytes that actually
    // arrive: a peer announcing a large frame and stalling holds no memory for it.
    let len = decode_header(&header)? as u64;
    let mut payload = Vec::new();
    r.take(len).read_to_end(&mut payload).await?;
    if payload.len() as u64 != len {
        return Err(IoError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(decode_payload(&payload)?))
}

pub async fn write_frame<T, W>(w: &mut W, msg: &T) -> Result<(), IoError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}
