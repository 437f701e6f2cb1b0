//! The one error type of the Docker boundary, and the sorting of bollard's errors into it.

use bollard::errors::Error as DockerError;
use corral_proto::ids::JobId;

/// What went wrong between Corral and Docker. Every variant names what it was working on; the
/// Docker error, when there is one, is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The daemon cannot be reached: no socket, refused connection, unsupported `DOCKER_HOST`.
    #[error(
        "docker is unreachable at {host} (is the daemon running, and may this user use its socket? \
         DOCKER_HOST selects another address)"
    )]
    Unreachable {
        host: String,
        #[source]
        source: DockerError,
    },

    /// The image is not on the host and could not be pulled; `reason` says so, with Docker's own
    /// explanation.
    #[error("image {image} is unavailable: {reason}")]
    ImageUnavailable { image: String, reason: String },

    /// Docker would not run a command in the container the way it was asked.
    #[error("cannot run a command in container {container}: {why}")]
    Exec { container: String, why: String },

    /// The container is on no network this host can reach (`network_mode: none`).
    #[error("container {container} has no network address")]
    NoAddress { container: String },

    /// A container named for the job already exists (an earlier attempt, or a restarted agent).
    #[error("a container named {name} already exists for job {job}")]
    ContainerExists {
        job: JobId,
        name: String,
        #[source]
        source: DockerError,
    },

    #[error("creating the container for job {job} from image {image}")]
    Create {
        job: JobId,
        image: String,
        #[source]
        source: DockerError,
    },

    #[error("starting container {container} of job {job}")]
    Start {
        job: JobId,
        container: String,
        #[source]
        source: DockerError,
    },

    /// The container does not exist (never created, or removed behind the agent's back).
    #[error("container {container} not found")]
    ContainerNotFound {
        container: String,
        #[source]
        source: DockerError,
    },

    /// Any other failure of an operation on one container.
    #[error("{op} container {container}")]
    Container {
        /// What was being done, as a verb phrase: `stopping`, `waiting for`, `reading logs of`.
        op: &'static str,
        container: String,
        #[source]
        source: DockerError,
    },

    /// A daemon-wide request failed (info, listing containers).
    #[error("{op}")]
    Daemon {
        op: &'static str,
        #[source]
        source: DockerError,
    },

    /// Docker answered, but not with something the shim can use.
    #[error("unexpected answer from docker while {op} {subject}: {detail}")]
    Unexpected { op: &'static str, subject: String, detail: String },

    /// What the job needs in its container before it starts could not be put there (a run's
    /// repo or files: `why` names which, and the path).
    #[error("{why}")]
    Prepare { container: String, why: String },
}

impl ShimError {
    /// Whether this error means the container is gone, so that callers can treat it as
    /// `container_lost` rather than as a failure of their own.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::ContainerNotFound { .. })
    }
}

/// Whether bollard failed to talk to the daemon at all, as opposed to the daemon refusing.
pub(crate) fn is_connection_error(err: &DockerError) -> bool {
    matches!(
        err,
        DockerError::HyperLegacyError { .. }
            | DockerError::IOError { .. }
            | DockerError::SocketNotFoundError(_)
            | DockerError::UnsupportedURISchemeError { .. }
    )
}

/// The HTTP status of a daemon's refusal, if that is what the error is.
pub(crate) fn status_of(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The daemon's own words, without bollard's wrapping, for messages shown to users.
pub(crate) fn daemon_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } if !message.is_empty() => message.trim().to_owned(),
        DockerError::DockerStreamError { error } => error.trim().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn display_names_context_without_repeating_the_source() {
        let err = ShimError::Container {
            op: "stopping",
            container: "corral-j1".into(),
            source: DockerError::DockerResponseServerError { status_code: 500, message: "boom".into() },
        };
        assert_eq!(err.to_string(), "stopping container corral-j1");
        assert!(err.source().is_some_and(|s| s.to_string().contains("boom")));
    }

    #[test]
    fn image_unavailable_names_the_image_and_the_reason() {
        let err = ShimError::ImageUnavailable { image: "x/y:1".into(), reason: "repository does not exist".into() };
        assert_eq!(err.to_string(), "image x/y:1 is unavailable: repository does not exist");
    }

    #[test]
    fn daemon_message_unwraps_server_errors() {
        let err = DockerError::DockerResponseServerError { status_code: 404, message: "no such image\n".into() };
        assert_eq!(daemon_message(&err), "no such image");
        assert_eq!(status_of(&err), Some(404));
        assert!(!is_connection_error(&err));
        assert!(is_connection_error(&DockerError::SocketNotFoundError("/nope".into())));
    }
}
