//! Making sure a job's image is on the host: use it if present, pull it otherwise.

use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder};
use bytes::Bytes;
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
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                return Err(self.classify(e, |source| ShimError::Daemon { op: "inspecting an image", source }));
            }
        }

        tracing::info!(image, "pulling image");
        let (name, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::default().from_image(name).tag(tag).build();
        let mut progress = docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            if let Err(e) = step {
                let e = self.classify(e, |e| ShimError::ImageUnavailable {
                    image: image.to_owned(),
                    reason: format!("it is not present locally and could not be pulled: {}", daemon_message(&e)),
                });
                return Err(e);
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
}
