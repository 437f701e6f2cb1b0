//! Making sure a job's image is on the host: use it if present, pull it otherwise.

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder, TagImageOptionsBuilder};
use bytes::Bytes;
use corral_proto::job::RegistryCredentials;
use futures_util::{Stream, StreamExt};

use crate::Shim;
use crate::error::{ShimError, daemon_message, status_of};

impl Shim {
    /// Whether Docker has `image`.
    pub async fn image_present(&self, image: &str) -> Result<bool, ShimError> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.classify(e, |source| ShimError::Daemon { op: "inspecting an image", source })),
        }
    }

    /// `docker load` of a tar streamed in; then `image` must be present.
    pub async fn load_image<S>(&self, image: &str, tar: S) -> Result<(), ShimError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let docker = self.client().await?;
        let mut steps = docker.import_image_stream(ImportImageOptionsBuilder::default().quiet(true).build(), tar, None);
        while let Some(step) = steps.next().await {
            let unavailable = |reason: String| ShimError::ImageUnavailable { image: image.to_owned(), reason };
            match step {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        let msg = detail.message.unwrap_or_else(|| "unknown error".into());
                        return Err(unavailable(format!("loading it from the coordinator failed: {msg}")));
                    }
                }
                Err(e) => {
                    return Err(self.classify(e, |e| {
                        unavailable(format!("loading it from the coordinator failed: {}", daemon_message(&e)))
                    }));
                }
            }
        }
        if self.image_present(image).await? {
            Ok(())
        } else {
            Err(ShimError::ImageUnavailable {
                image: image.to_owned(),
                reason: "the coordinator's copy was loaded but Docker does not list it".into(),
            })
        }
    }

    /// Ok when `image` is present or could be pulled. An image that is absent and cannot be pulled
    /// (unknown repository, no registry access, denied) is [`ShimError::ImageUnavailable`].
    pub async fn ensure_image(&self, image: &str) -> Result<(), ShimError> {
        self.ensure_image_with(image, None).await
    }

    /// Like [`Shim::ensure_image`], with credentials for the image's own registry (`registry_auth`;
    /// the mirror, which serves public images, never sees them).
    pub async fn ensure_image_with(&self, image: &str, auth: Option<&RegistryCredentials>) -> Result<(), ShimError> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                return Err(self.classify(e, |source| ShimError::Daemon { op: "inspecting an image", source }));
            }
        }

        // Docker Hub images through the mirror first, when one is set; the registry itself next.
        let mut failures = Vec::new();
        let mut pulled = false;
        if let Some(mirrored) = self.inner.mirror.as_deref().and_then(|m| mirror_reference(image, m)) {
            tracing::info!(image, %mirrored, "pulling image through the registry mirror");
            match self.pull(docker, &mirrored, None).await {
                Ok(()) => {
                    let (repo, tag) = split_reference(image);
                    let options = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
                    match docker.tag_image(&mirrored, Some(options)).await {
                        Ok(()) => pulled = true,
                        Err(e) => failures.push(format!("tagging {mirrored} as {image}: {}", daemon_message(&e))),
                    }
                }
                Err(e) => match e {
                    ShimError::Unreachable { .. } => return Err(e),
                    other => failures.push(format!("from the mirror ({mirrored}): {}", pull_reason(&other))),
                },
            }
        }
        if !pulled {
            tracing::info!(image, "pulling image");
            if let Err(e) = self.pull(docker, image, auth).await {
                let e = match e {
                    ShimError::Unreachable { .. } => return Err(e),
                    other => other,
                };
                let reason = pull_reason(&e);
                failures.push(if failures.is_empty() { reason } else { format!("from the registry: {reason}") });
                return Err(ShimError::ImageUnavailable {
                    image: image.to_owned(),
                    reason: format!("it is not present locally and could not be pulled: {}", failures.join("; ")),
                });
            }
        }

        // A pull can end without an error and still leave nothing usable (a platform mismatch, an
        // interrupted stream); only the daemon's own view counts.
        match docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(ShimError::ImageUnavailable {
                image: image.to_owned(),
                reason: "it was pulled but is still not present locally (a platform mismatch?)".to_owned(),
            }),
            Err(e) => Err(self.classify(e, |source| ShimError::Daemon { op: "inspecting an image", source })),
        }
    }
}

impl Shim {
    async fn pull(
        &self,
        docker: &bollard::Docker,
        image: &str,
        auth: Option<&RegistryCredentials>,
    ) -> Result<(), ShimError> {
        let (name, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
        let credentials = auth.map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            ..Default::default()
        });
        let mut progress = docker.create_image(Some(options), None, credentials);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                return Err(self.classify(e, |e| ShimError::ImageUnavailable {
                    image: image.to_owned(),
                    reason: daemon_message(&e),
                }));
            }
        }
        Ok(())
    }
}

fn pull_reason(e: &ShimError) -> String {
    match e {
        ShimError::ImageUnavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// A Docker Hub image's name on a mirror of Docker Hub (`busybox` → `MIRROR/library/busybox`);
/// `None` for images of other registries (the daemon's own settings cover those).
pub fn mirror_reference(image: &str, mirror: &str) -> Option<String> {
    let image = image.strip_prefix("docker.io/").unwrap_or(image);
    let first = image.split('/').next()?;
    let has_registry = image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry || image.contains('@') {
        return None;
    }
    let mirror = mirror.trim_end_matches('/');
    let mirror = mirror.strip_prefix("https://").or_else(|| mirror.strip_prefix("http://")).unwrap_or(mirror);
    Some(if image.contains('/') { format!("{mirror}/{image}") } else { format!("{mirror}/library/{image}") })
}

/// `repo[:tag]` or `repo@digest` as the pull API wants it: name and tag apart, the tag `latest` when
/// none is given (an empty tag would pull every tag of the repository).
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    // A colon before the last slash belongs to a registry host with a port (`host:5000/repo`).
    let after_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[after_slash..].rfind(':') {
        Some(i) => (&image[..after_slash + i], &image[after_slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("corral-test/busybox:latest"), ("corral-test/busybox", "latest"));
        assert_eq!(split_reference("host:5000/team/img"), ("host:5000/team/img", "latest"));
        assert_eq!(split_reference("host:5000/team/img:1.2"), ("host:5000/team/img", "1.2"));
        assert_eq!(split_reference("img@sha256:abc"), ("img", "sha256:abc"));
    }

    #[test]
    fn docker_hub_images_map_onto_the_mirror_and_others_do_not() {
        let m = "mirror.local:5000";
        assert_eq!(mirror_reference("busybox", m).as_deref(), Some("mirror.local:5000/library/busybox"));
        assert_eq!(
            mirror_reference("docker.io/library/ubuntu:22.04", m).as_deref(),
            Some("mirror.local:5000/library/ubuntu:22.04")
        );
        assert_eq!(
            mirror_reference("team/app:1", "https://mirror.local:5000/").as_deref(),
            Some("mirror.local:5000/team/app:1")
        );
        assert_eq!(mirror_reference("ghcr.io/team/app", m), None);
        assert_eq!(mirror_reference("localhost/app", m), None);
        assert_eq!(mirror_reference("reg:5000/app", m), None);
    }
}
