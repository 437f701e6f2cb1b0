//! `corral image push|list|rm`: images kept by the coordinator, for nodes with no registry.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use corral_proto::api;

use crate::ImageCommand;
use crate::client::Client;
use crate::output::{ago, table};

type Out<'a> = &'a mut (dyn Write + Send);

pub async fn image(client: &Client, command: ImageCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        ImageCommand::Push { image, file } => push(client, image.as_deref(), file, out).await,
        ImageCommand::List { json } => {
            let images: Vec<api::ImageInfo> = client.get("/api/images").await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&images)?)?;
                return Ok(0);
            }
            let mut t = table(&["IMAGE", "SIZE", "LAYERS", "PUSHED"]);
            for i in &images {
                t.add_row(vec![i.name.clone(), mib(i.size), i.layers.to_string(), ago(i.pushed_ms)]);
            }
            writeln!(out, "{t}")?;
            Ok(0)
        }
        ImageCommand::Rm { image } => {
            let name: String =
                client.delete(&format!("/api/images?name={}", crate::client::query_value(&image))).await?;
            writeln!(out, "removed {name} (layers no other image uses are gone too)")?;
            Ok(0)
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// A reader as a stream of chunks for a request body; it ends after the first error.
fn chunks<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = vec![0u8; 256 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

async fn push(client: &Client, image: Option<&str>, file: Option<PathBuf>, out: Out<'_>) -> anyhow::Result<i32> {
    let stored: Vec<api::ImageInfo> = match (image, file) {
        (_, Some(path)) => {
            let f = tokio::fs::File::open(&path).await.with_context(|| format!("cannot open {}", path.display()))?;
            let body = reqwest::Body::wrap_stream(chunks(f));
            client.post_body("/api/images", body).await.with_context(|| format!("pushing {}", path.display()))?
        }
        (Some(image), None) => {
            // Straight from the local Docker: `docker save` streamed up, never written here.
            let mut child = tokio::process::Command::new("docker")
                .args(["save", image])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run `docker save` (is the docker CLI installed? or push a tarball with --file)")?;
            let stdout = child.stdout.take().context("docker save has no output")?;
            let uploaded = client.post_body("/api/images", reqwest::Body::wrap_stream(chunks(stdout))).await;
            let done = child.wait_with_output().await.context("docker save")?;
            if !done.status.success() {
                bail!("docker save {image} failed: {}", String::from_utf8_lossy(&done.stderr).trim());
            }
            uploaded?
        }
        (None, None) => bail!("name an image (corral image push IMAGE) or a `docker save` tarball (--file FILE)"),
    };
    for i in &stored {
        writeln!(out, "pushed {} ({} layer(s), {})", i.name, i.layers, mib(i.size))?;
    }
    Ok(0)
}
