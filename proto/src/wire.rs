//! The agent↔coordinator protocol: frames and the messages inside them.
//!
//! Every message travels in a frame: a fixed 10-byte header — magic `CRRL`, the frame format version
//! (u16, big-endian) and the payload length (u32, big-endian) — followed by a postcard payload. The
//! header is checked and the length bounded **before** any payload byte is read or decoded, so a peer
//! cannot make the other side allocate more than [`MAX_FRAME_LEN`].
//!
//! postcard is not self-describing: never reorder or remove fields or variants of a released message;
//! add new variants at the end. The golden-bytes tests below pin every message's encoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId};
use crate::inventory::HostInventory;
use crate::job::{JobSpec, JobState, TerminationReason};

/// The ALPN protocol id agents and the coordinator speak. Bumped on an incompatible change.
pub const ALPN: &[u8] = b"corral/1";
pub const MAGIC: [u8; 4] = *b"CRRL";
/// Version of the frame layout itself.
pub const FRAME_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 10;
/// The largest payload either side accepts.
pub const MAX_FRAME_LEN: u32 = 4 << 20;
/// Protocol (message set) versions this build speaks, oldest to newest.
/// The oldest protocol the coordinator accepts. Protocol 1 agents read a [`JobSpec`] without its
/// trailing `container` (postcard leaves trailing bytes unread), so they are sent only jobs that
/// need none of it.
pub const PROTOCOL_MIN: u16 = 1;
/// Protocol 2: [`JobSpec::container`] (shell, user, mounts, uploads, devices, ...).
/// Protocol 3: [`AgentMessage::Metrics`], and [`TerminationReason::GpuError`] in a `StopJob`.
pub const PROTOCOL_MAX: u16 = 3;
/// The oldest protocol this build's agent speaks: it needs `JobSpec::container`, which a
/// protocol 1 coordinator does not send.
pub const AGENT_PROTOCOL_MIN: u16 = 2;
/// The name the coordinator's QUIC certificate carries; agents verify it whatever address they dial.
pub const COORDINATOR_SERVER_NAME: &str = "corral-coordinator";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: the peer does not speak the Corral protocol")]
    BadMagic([u8; 4]),
    #[error("unsupported frame version {0} (this build speaks {FRAME_VERSION})")]
    UnsupportedVersion(u16),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge(u32),
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// Checks a frame header and returns the payload length it announces.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<u32, FrameError> {
    let magic = [h[0], h[1], h[2], h[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([h[4], h[5]]);
    if version != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let len = u32::from_be_bytes([h[6], h[7], h[8], h[9]]);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Encodes a message as one frame: header then postcard payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_stdvec(msg).map_err(|e| FrameError::Payload(e.to_string()))?;
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a payload (the bytes after a checked header).
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Payload(e.to_string()))
}

/// Decodes one whole frame from the front of `buf`. `Ok(None)` means more bytes are needed; on
/// success returns the message and the number of bytes consumed.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = decode_header(header)? as usize;
    let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, HEADER_LEN + len)))
}

/// Sent by the agent first on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_min: u16,
    pub protocol_max: u16,
    pub agent_version: String,
    /// Present on the first connection, made without a client certificate.
    pub enroll: Option<EnrollRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The secret part of the join token.
    pub secret: String,
    /// A PKCS#10 certificate signing request for the node's key (DER).
    #[serde(with = "serde_bytes")]
    pub csr_der: Vec<u8>,
    pub hostname: String,
    /// A fleet the agent asks to join (the token's fleet wins when it names one).
    pub fleet: Option<String>,
}

/// The coordinator's answer to a Hello of a connection with a valid node certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u16,
    pub node_id: NodeId,
    pub coordinator_version: String,
    /// Seconds between heartbeats the coordinator expects.
    pub heartbeat_secs: u32,
}

/// The coordinator's answer to an accepted enrollment. The agent stores the certificate and
/// reconnects with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub node_id: NodeId,
    pub certificate_pem: String,
    pub ca_pem: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    UnsupportedProtocol,
    WrongSecret,
    NoCertificate,
    UnknownNode,
    Revoked,
    BadRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

/// A container the agent found on its host, reported in full on every (re)connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    pub job_id: JobId,
    pub running: bool,
    pub exit_code: Option<i64>,
}

/// A change in one job's life, as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub job_id: JobId,
    pub state: JobState,
    pub exit_code: Option<i64>,
    pub reason: Option<TerminationReason>,
    pub message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello(Hello),
    Inventory(HostInventory),
    /// The full set of Corral containers on the host.
    Containers(Vec<ContainerReport>),
    JobUpdate(JobUpdate),
    Heartbeat {
        seq: u64,
    },
    /// The answer to `OpenTunnel`, first frame back on the tunnel's stream.
    TunnelReply(TunnelReply),
    /// First frame of a bi-stream the agent opens: send `image` from the coordinator's image store
    /// (`corral image push`). The answer is [`CoordinatorMessage::ImageReply`]; after
    /// [`ImageReply::Stored`] the stream carries the image as a `docker load` tar.
    FetchImage {
        image: String,
    },
    /// First frame of a bi-stream the agent opens after [`CoordinatorMessage::Upgrade`]: send the
    /// agent binary with this SHA-256. The coordinator answers with the binary's bytes, or closes
    /// the stream at once when it serves no such binary.
    FetchAgent {
        sha256: String,
    },
    /// The cloud announced it takes this node's instance back (a spot interruption notice from
    /// the instance metadata service): its jobs are interrupted now, to run elsewhere.
    InterruptionNotice {
        /// `terminate`, `stop` or `hibernate`.
        action: String,
        /// When, as the cloud said it (RFC 3339).
        time: String,
    },
    /// First frame of a bi-stream the agent opens for one job's output. The coordinator answers
    /// [`CoordinatorMessage::LogStored`] with what it already has; the agent then sends
    /// [`LogFrame::Chunk`]s from there and [`LogFrame::End`], and the coordinator answers
    /// `LogStored { complete: true }` once the whole output is on its disk (fsync'd). Only then may
    /// the agent remove the container and its spooled output.
    OpenLog {
        job_id: JobId,
    },
    /// First frame of a bi-stream the agent opens: send the upload with this SHA-256 from the
    /// coordinator's upload store (a local repo or `files` entry that `corral apply` sent). The
    /// answer is [`CoordinatorMessage::ImageReply`]: after [`ImageReply::Stored`] the stream
    /// carries the upload's tar, `size` bytes; `NotStored` when the store lacks it.
    FetchUpload {
        sha256: String,
    },
    /// The Docker volumes Corral made on this host (its named volumes), with their size where the
    /// agent can measure it: sent on every connection and after a job that mounted one ended or a
    /// volume was deleted. Protocol 2.
    Volumes(Vec<VolumeReport>),
    /// Protocol 2: the host's interface addresses (`ip/prefix`, as `ip addr` shows them), sent
    /// before `Inventory` on every connection, for fleets that choose a node's address by
    /// `ssh_config.network`. A message of its own rather than a field of [`HostInventory`]: a
    /// protocol 1 agent's inventory must still decode (postcard has no optional trailing fields).
    Interfaces {
        addresses: Vec<String>,
    },
    /// Protocol 3: what the node measured over the last interval (its GPUs, its jobs' containers,
    /// the host), sent every interval while connected. An interval not sent is dropped, but for
    /// its Xids, which the next report carries.
    Metrics(Box<crate::metrics::NodeMetrics>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordinatorMessage {
    Welcome(Welcome),
    Enrolled(Enrollment),
    Refused(Refusal),
    StartJob(Box<JobSpec>),
    StopJob {
        job_id: JobId,
        abort: bool,
        reason: TerminationReason,
    },
    /// The coordinator has all of this job's logs: the agent may remove the container.
    ForgetJob {
        job_id: JobId,
    },
    HeartbeatAck {
        seq: u64,
    },
    /// First frame of a bi-stream the coordinator opens: connect it to `port` of the job's
    /// container. After the agent's `TunnelReply::Connected` the stream carries raw bytes.
    OpenTunnel {
        job_id: JobId,
        port: u16,
    },
    /// First frame of a bi-stream the coordinator opens: run a command in the job's container.
    /// After the agent's `TunnelReply::Connected` both sides send [`ExecFrame`]s.
    OpenExec(ExecRequest),
    /// First frame of a bi-stream the coordinator opens: serve SSH for the job's container on it
    /// (the agent is the SSH server; the container needs none). Only the user's `authorized_keys`
    /// (OpenSSH public key lines) may log in. After `TunnelReply::Connected`, raw SSH bytes.
    OpenSsh {
        job_id: JobId,
        authorized_keys: Vec<String>,
    },
    /// The answer to [`AgentMessage::FetchImage`] and [`AgentMessage::FetchUpload`].
    ImageReply(ImageReply),
    /// Upgrade to the agent binary the coordinator serves: fetch it ([`AgentMessage::FetchAgent`]),
    /// check its digest, swap it in and restart; running containers are left alone.
    Upgrade {
        version: String,
        sha256: String,
        size: u64,
    },
    /// On a log stream ([`AgentMessage::OpenLog`]): the coordinator has the job's output up to
    /// `offset`, synced to disk; `complete` once `LogFrame::End` matched it.
    LogStored {
        offset: u64,
        complete: bool,
    },
    /// Remove this named volume's Docker volume from the node (`corral volume delete`); the agent
    /// answers with a fresh [`AgentMessage::Volumes`]. Protocol 2 sessions only.
    DeleteVolume {
        docker_name: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageReply {
    /// The tar follows: this many bytes.
    Stored { size: u64 },
    /// The coordinator's store does not have it: pull it from a registry.
    NotStored,
}

/// A command to run in a job's running container (`corral exec`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub job_id: JobId,
    pub command: Vec<String>,
    /// Allocate a terminal (output is then one stream, and `Resize` applies).
    pub tty: bool,
    pub size: Option<TermSize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// What travels on an exec stream once it is open: input and resizes from the user, output and
/// the exit code from the container. The stream ends after `Exit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecFrame {
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// No more input (the command sees end of file).
    StdinEnd,
    Resize(TermSize),
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The command ended; `None` when its code could not be read.
    Exit {
        code: Option<i64>,
    },
}

/// Whether the agent reached the port a tunnel names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelReply {
    Connected,
    Failed { message: String },
}

/// Frames of a log stream (one unidirectional stream per job, agent → coordinator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFrame {
    /// First frame of the stream.
    Open { job_id: JobId },
    /// Output bytes starting at `offset` in the job's log. After a reconnect the agent replays from
    /// an earlier offset; the coordinator keeps only the bytes it does not have yet.
    Chunk {
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The container exited and all of its output was sent.
    End { total: u64 },
}

/// One of Corral's Docker volumes on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub docker_name: String,
    /// Bytes of its files; `None` when the agent cannot read them (Docker's data root is not
    /// where it can reach).
    pub size: Option<u64>,
}

/// Chooses the newest protocol both sides speak.
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let hi = peer_max.min(PROTOCOL_MAX);
    (hi >= peer_min.max(PROTOCOL_MIN)).then_some(hi)
}

#[cfg(feature = "io")]
pub mod io;

#[cfg(test)]
mod tests;
