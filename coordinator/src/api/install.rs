//! What a host needs to join without anything installed but `curl`: the CA certificate (checked
//! against the join token's hash before anything else is trusted), the install and uninstall
//! scripts, the agent binary, the time (for the clock-skew check), and the node as the coordinator
//! sees it once it has joined.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use corral_proto::ids::NodeId;
use corral_proto::resources::GB;
use corral_proto::token::JoinToken;

use super::{AppState, Error, bearer_token, err};
use crate::secrets::sha256_hex;

pub const INSTALL_SH: &str = include_str!("../../../deploy/install.sh");
pub const UNINSTALL_SH: &str = include_str!("../../../deploy/uninstall.sh");

/// One agent binary as served: its bytes, their SHA-256, and its version (`corral-agent --version`,
/// asked of binaries for this coordinator's architecture).
pub struct AgentBinary {
    pub bytes: Bytes,
    pub sha256: String,
    pub version: Option<String>,
}

struct Loaded {
    binary: Arc<AgentBinary>,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

/// The agent binaries this coordinator serves: the one it was given for its own architecture, and
/// `corral-agent-<arch>` files beside it for others. Read on first request and again whenever the
/// file changes (a new binary dropped in place starts a rollout: [`crate::nodes::upgrade`]).
pub struct AgentDist {
    binary: Option<PathBuf>,
    loaded: Mutex<HashMap<String, Loaded>>,
}

impl AgentDist {
    pub fn new(binary: Option<PathBuf>) -> Self {
        Self { binary, loaded: Mutex::default() }
    }

    fn path_for(&self, arch: &str) -> Option<PathBuf> {
        let binary = self.binary.as_ref()?;
        if arch == std::env::consts::ARCH {
            return Some(binary.clone());
        }
        Some(binary.parent().unwrap_or(FsPath::new(".")).join(format!("corral-agent-{arch}")))
    }

    /// The binary for `arch` (`x86_64`, `aarch64`, as `uname -m` says), or why there is none.
    /// Blocks (reads and hashes the file when it changed).
    pub fn get(&self, arch: &str) -> Result<Arc<AgentBinary>, String> {
        if !arch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || arch.is_empty() {
            return Err(format!("{arch:?} is not an architecture name (x86_64, aarch64)"));
        }
        let Some(path) = self.path_for(arch) else {
            return Err("this coordinator serves no agent binary: start it with --agent-binary PATH".into());
        };
        let unreadable = |e: std::io::Error| {
            format!("no agent binary for {arch}: cannot read {} ({e}); put it there", path.display())
        };
        let meta = std::fs::metadata(&path).map_err(unreadable)?;
        let modified = meta.modified().ok();
        if let Some(found) = self.loaded.lock().expect("agent dist lock").get(arch)
            && found.len == meta.len()
            && found.modified == modified
        {
            return Ok(found.binary.clone());
        }
        let bytes = std::fs::read(&path).map_err(unreadable)?;
        let version = (arch == std::env::consts::ARCH).then(|| binary_version(&path)).flatten();
        let binary = Arc::new(AgentBinary { sha256: sha256_hex(&bytes), bytes: bytes.into(), version });
        let loaded = Loaded { binary: binary.clone(), len: meta.len(), modified };
        self.loaded.lock().expect("agent dist lock").insert(arch.to_owned(), loaded);
        Ok(binary)
    }

    /// A binary already loaded, by its SHA-256 (what an upgrading agent asks for).
    pub fn by_digest(&self, sha256: &str) -> Option<Arc<AgentBinary>> {
        let loaded = self.loaded.lock().expect("agent dist lock");
        loaded.values().find(|l| l.binary.sha256 == sha256).map(|l| l.binary.clone())
    }
}

/// `corral-agent 0.1.0` → `0.1.0`.
fn binary_version(path: &FsPath) -> Option<String> {
    let out = std::process::Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1)?;
    (out.status.success() && text.starts_with("corral-agent ")).then(|| version.to_owned())
}

/// `GET /ca.pem`: the CA a join token pins (the script hashes it before trusting this server).
pub(super) async fn ca_pem(Extract(state): Extract<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-pem-file")], state.pki.ca_pem().to_owned()).into_response()
}

/// `GET /install.sh`: the install script, with this coordinator's address filled in as the
/// request reached it.
pub(super) async fn install_sh(Extract(state): Extract<AppState>, headers: HeaderMap) -> Result<Response, Error> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    // The value lands in a shell script: a host name, an IPv4 or a bracketed IPv6, and a port.
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
        return Err(err(StatusCode::BAD_REQUEST, "the request has no usable Host header"));
    }
    let scheme = if state.https { "https" } else { "http" };
    let script = INSTALL_SH.replacen("@CORRAL_URL@", &format!("{scheme}://{host}"), 1).replacen(
        "@CORRAL_QUIC_PORT@",
        &state.quic_port().to_string(),
        1,
    );
    Ok(([(header::CONTENT_TYPE, "text/x-shellscript")], script).into_response())
}

pub(super) async fn uninstall_sh() -> Response {
    ([(header::CONTENT_TYPE, "text/x-shellscript")], UNINSTALL_SH).into_response()
}

/// `GET /download/corral-agent-{arch}` and `.../corral-agent-{arch}.sha256`.
pub(super) async fn download(Extract(state): Extract<AppState>, Path(file): Path<String>) -> Result<Response, Error> {
    let Some(rest) = file.strip_prefix("corral-agent-") else {
        return Err(err(StatusCode::NOT_FOUND, format!("no file {file:?} here (try corral-agent-x86_64)")));
    };
    let (arch, digest_only) = match rest.strip_suffix(".sha256") {
        Some(arch) => (arch, true),
        None => (rest, false),
    };
    let dist = state.agent_dist.clone();
    let arch_owned = arch.to_owned();
    let binary = tokio::task::spawn_blocking(move || dist.get(&arch_owned))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| err(StatusCode::NOT_FOUND, e))?;
    Ok(if digest_only {
        format!("{}  corral-agent\n", binary.sha256).into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/octet-stream")], binary.bytes.clone()).into_response()
    })
}

/// `GET /api/time`: seconds since the epoch, for the install script's clock-skew check.
pub(super) async fn time() -> String {
    format!("{}\n", crate::secrets::now_ms() / 1000)
}

/// The join token of a request, checked against this coordinator's CA.
fn join_token(state: &crate::State, headers: &HeaderMap) -> Result<JoinToken, Error> {
    let token: JoinToken = bearer_token(headers)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| err(StatusCode::UNAUTHORIZED, "a join token is needed as bearer token"))?;
    if token.ca_hash != state.pki.ca_hash() {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "this join token was made for another coordinator (its CA hash differs)",
        ));
    }
    Ok(token)
}

/// `GET /api/join/check` with the join token as bearer: 200 when it would enroll a host now, else
/// 403 and why. The install script asks before it installs anything.
pub(super) async fn check(Extract(state): Extract<AppState>, headers: HeaderMap) -> Result<String, Error> {
    let token = join_token(&state, &headers)?;
    match state.store.check_join_token(&sha256_hex(token.secret.as_bytes()))? {
        Ok(()) => Ok("ok\n".into()),
        Err(why) => Err(err(StatusCode::FORBIDDEN, why)),
    }
}

#[derive(Deserialize)]
pub(super) struct NodeQuery {
    id: String,
}

/// `GET /api/join/node?id=N` with the join token as bearer: the node as the coordinator sees it,
/// in plain text for the install script to print. 404 until the node has joined and reported.
pub(super) async fn joined_node(
    Extract(state): Extract<AppState>,
    headers: HeaderMap,
    Query(q): Query<NodeQuery>,
) -> Result<String, Error> {
    let token = join_token(&state, &headers)?;
    if !state.store.join_token_known(&sha256_hex(token.secret.as_bytes()))? {
        return Err(err(StatusCode::UNAUTHORIZED, "unknown or revoked join token"));
    }
    let node = state.store.node(&NodeId::from(q.id.as_str()))?.filter(|n| !n.revoked);
    let Some((node, inv)) = node.and_then(|n| n.inventory.clone().map(|i| (n, i))) else {
        return Err(err(StatusCode::NOT_FOUND, format!("node {:?} has not joined yet", q.id)));
    };
    let connected = state.sessions.connected().contains(&node.id);
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / GB as f64);
    let mut out = format!(
        "node {} ({}), fleet {}, {}\n  cpu:    {} x {} ({})\n  memory: {}\n  disk:   {}\n  docker: {}{}\n",
        node.name,
        node.id,
        node.fleet.as_deref().unwrap_or("-"),
        if connected { "ready" } else { "offline" },
        inv.cpu_cores,
        inv.cpu_model,
        inv.arch,
        gib(inv.memory.bytes()),
        gib(inv.disk.bytes()),
        inv.docker.version,
        if inv.docker.nvidia_runtime { " (nvidia runtime)" } else { "" },
    );
    if inv.gpus.is_empty() {
        out.push_str("  gpus:   none\n");
    }
    for g in &inv.gpus {
        out.push_str(&format!("  gpu {}:  {} {}\n", g.index, g.name, gib(g.memory.bytes())));
    }
    if let (Some(driver), Some(cuda)) = (&inv.gpu_driver_version, &inv.cuda_version) {
        out.push_str(&format!("  driver: {driver}, CUDA {cuda}\n"));
    }
    // Its fleet's word first, for the script to stop on (`refused: ...`).
    if let Some(why) = crate::nodes::fleet_nodes::refusal(&state, &node) {
        out = format!("refused: {why}\n{out}");
    }
    Ok(out)
}
