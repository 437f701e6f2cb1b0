//! `corral-shim`: the container runtime boundary. It turns a
//! [`JobSpec`](corral_proto::job::JobSpec) into a Docker container and
//! gives the agent the verbs it needs on it — create and start, logs, wait, stop, kill, remove — and
//! finds Corral's containers again by label after an agent restart.
//!
//! [`Shim`] is a cheap-to-clone handle over one bollard client; it owns no tasks or channels. The API
//! version is negotiated with the daemon on first use (and retried on the next call if the daemon
//! was down), so [`Shim::connect`] itself does no I/O beyond checking that the socket exists.
//!
//! Files: [`spec`] (job spec → container configuration, pure), `image` (present or pull), `container`
//! (the verbs on one container), `exec` (commands in a running container), `list` (finding and
//! inspecting containers), `stats` (what a container uses), [`error`].

use std::sync::Arc;

use bollard::errors::Error as DockerError;
use bollard::{API_DEFAULT_VERSION, ClientVersion, Docker};
use corral_proto::inventory::DockerInfo;
use tokio::sync::OnceCell;

mod container;
mod devices;
pub mod error;
mod exec;
mod files;
mod image;
mod list;
mod logs;
pub mod network;
pub mod spec;
mod stats;
pub mod uploads;
pub mod volume;

pub use container::Output;
pub use error::ShimError;
pub use exec::{Exec, ExecOutput};
pub use files::PathStat;
pub use list::{ContainerState, ManagedContainer};
pub use spec::{GpuPassthrough, RunOptions, container_name};
pub use stats::Stats;

/// Where Docker listens when `DOCKER_HOST` is unset.
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// bollard's per-request limit on waiting for response headers. Streams (logs, wait, pull) are not
/// bounded by it once the headers have arrived.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// A connection to the Docker daemon of this host.
#[derive(Clone, Debug)]
pub struct Shim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As the user wrote it (`DOCKER_HOST`) or the default, for messages.
    host: String,
    /// Speaks bollard's newest API version; replaced by `negotiated` once the daemon has answered.
    initial: Docker,
    negotiated: OnceCell<Docker>,
    /// A mirror of Docker Hub to pull through first (`host[:port]`).
    mirror: Option<String>,
    /// Held while a run's network is looked up and a container attached to it, or the network
    /// removed: Docker 20.10 lets two creations of one name both succeed, and a removal between a
    /// lookup and a create would leave the create without its network.
    networks: tokio::sync::Mutex<()>,
}

impl Shim {
    /// Connects to the daemon named by `DOCKER_HOST` (`unix://` or `tcp://`), or the local socket.
    /// Fails when the socket does not exist or the address is not one Docker serves.
    pub fn connect() -> Result<Self, ShimError> {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.trim().is_empty());
        Self::connect_to(host.as_deref().unwrap_or(DEFAULT_HOST))
    }

    /// Connects to the daemon at `host` (`unix:///path`, `/path`, `tcp://host:port`).
    pub fn connect_to(host: &str) -> Result<Self, ShimError> {
        let host = host.trim().to_owned();
        let initial =
            open(&host, API_DEFAULT_VERSION).map_err(|source| ShimError::Unreachable { host: host.clone(), source })?;
        Ok(Self {
            inner: Arc::new(Inner {
                host,
                initial,
                negotiated: OnceCell::new(),
                mirror: None,
                networks: Default::default(),
            }),
        })
    }

    /// Pulls Docker Hub images through `mirror` (`host[:port]`) first, the registry itself next.
    pub fn with_registry_mirror(self, mirror: Option<String>) -> Self {
        let inner = &self.inner;
        let (host, initial) = (inner.host.clone(), inner.initial.clone());
        Self {
            inner: Arc::new(Inner { host, initial, negotiated: OnceCell::new(), mirror, networks: Default::default() }),
        }
    }

    pub(crate) async fn lock_networks(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.networks.lock().await
    }

    /// The daemon's address, as it appears in messages.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The daemon's version and whether the NVIDIA runtime is registered with it.
    pub async fn docker_info(&self) -> Result<DockerInfo, ShimError> {
        let info =
            self.client().await?.info().await.map_err(|e| {
                self.classify(e, |source| ShimError::Daemon { op: "reading docker's system info", source })
            })?;
        Ok(DockerInfo {
            version: info.server_version.unwrap_or_else(|| "unknown".to_owned()),
            nvidia_runtime: info.runtimes.is_some_and(|r| r.contains_key("nvidia")),
        })
    }

    /// The client, speaking an API version the daemon accepts.
    async fn client(&self) -> Result<&Docker, ShimError> {
        self.inner.negotiated.get_or_try_init(|| self.negotiate()).await
    }

    /// Settles on the newest API version both sides speak: bollard's negotiation, and should a daemon
    /// older than bollard refuse even that request ("client version 1.53 is too new"), the client is
    /// reopened at the maximum the refusal names.
    async fn negotiate(&self) -> Result<Docker, ShimError> {
        let unreachable = |source| ShimError::Unreachable { host: self.inner.host.clone(), source };
        match self.inner.initial.clone().negotiate_version().await {
            Ok(docker) => Ok(docker),
            Err(e) => {
                match max_supported_version(&e) {
                    Some(version) => {
                        tracing::debug!(host = %self.inner.host, %version, "docker api version negotiated down");
                        open(&self.inner.host, &version).map_err(unreachable)
                    }
                    None => Err(self
                        .classify(e, |source| ShimError::Daemon { op: "negotiating the docker api version", source })),
                }
            }
        }
    }

    /// `other(e)`, unless `e` means the daemon could not be reached at all.
    fn classify(&self, e: DockerError, other: impl FnOnce(DockerError) -> ShimError) -> ShimError {
        if error::is_connection_error(&e) {
            ShimError::Unreachable { host: self.inner.host.clone(), source: e }
        } else {
            other(e)
        }
    }

    /// The error of `op` on `container`: not found, unreachable, or the operation's own.
    fn container_error(&self, op: &'static str, container: &str, e: DockerError) -> ShimError {
        if error::status_of(&e) == Some(404) {
            return ShimError::ContainerNotFound { container: container.to_owned(), source: e };
        }
        self.classify(e, |source| ShimError::Container { op, container: container.to_owned(), source })
    }
}

fn open(host: &str, version: &ClientVersion) -> Result<Docker, DockerError> {
    if let Some(path) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host)) {
        Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, version)
    } else if host.starts_with("tcp://") || host.starts_with("http://") {
        Docker::connect_with_http(host, REQUEST_TIMEOUT_SECS, version)
    } else {
        Err(DockerError::UnsupportedURISchemeError { uri: host.to_owned() })
    }
}

/// The daemon's maximum API version from its refusal of a newer client:
/// `client version 1.53 is too new. Maximum supported API version is 1.41`.
fn max_supported_version(e: &DockerError) -> Option<ClientVersion> {
    let DockerError::DockerResponseServerError { status_code: 400, message } = e else {
        return None;
    };
    let (_, tail) = message.split_once("Maximum supported API version is ")?;
    let (major, minor) = tail.trim().trim_end_matches('.').split_once('.')?;
    Some(ClientVersion { major_version: major.parse().ok()?, minor_version: minor.trim().parse().ok()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_maximum_is_read_from_its_refusal() {
        let e = DockerError::DockerResponseServerError {
            status_code: 400,
            message: "client version 1.53 is too new. Maximum supported API version is 1.41".to_owned(),
        };
        let v = max_supported_version(&e);
        assert_eq!(v.map(|v| (v.major_version, v.minor_version)), Some((1, 41)));

        let other = DockerError::DockerResponseServerError { status_code: 500, message: "boom".to_owned() };
        assert!(max_supported_version(&other).is_none());
    }

    #[test]
    fn a_missing_socket_is_reported_with_its_address() {
        let err = Shim::connect_to("unix:///nonexistent/corral-test.sock").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("docker is unreachable at unix:///nonexistent/corral-test.sock"), "{text}");
    }

    #[test]
    fn unsupported_addresses_are_refused() {
        let err = Shim::connect_to("ssh://host").err();
        assert!(matches!(err, Some(ShimError::Unreachable { .. })));
    }
}
