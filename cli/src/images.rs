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
        ImageCommand::Push { image, file, shared } => {
            push(client, &images_path(client, shared)?, image.as_deref(), file, out).await
        }
        ImageCommand::List { json, shared } => {
            let images: Vec<api::ImageInfo> = client.get(&images_path(client, shared)?).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&images)?)?;
                return Ok(0);
            }
            let mut t = table(&["IMAGE", "PROJECT", "SIZE", "LAYERS", "PUSHED"]);
            for i in &images {
                let project = i.project.clone().unwrap_or_else(|| "(shared)".to_owned());
                t.add_row(vec![i.name.clone(), project, mib(i.size), i.layers.to_string(), ago(i.pushed_ms)]);
            }
            writeln!(out, "{t}")?;
            Ok(0)
        }
        ImageCommand::Rm { image, shared } => {
            let path = format!("{}?name={}", images_path(client, shared)?, crate::client::query_value(&image));
            let name: String = client.delete(&path).await?;
            writeln!(out, "removed {name} (layers no other image uses are gone too)")?;
            Ok(0)
        }
    }
}

/// The project's images, or with `--shared` those every project shares.
fn images_path(client: &Client, shared: bool) -> anyhow::Result<String> {
    if shared { Ok("/api/images".to_owned()) } else { client.project_api(&["images"]) }
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

async fn push(
    client: &Client,
    path: &str,
    image: Option<&str>,
    file: Option<PathBuf>,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let stored: Vec<api::ImageInfo> = match (image, file) {
        (_, Some(file)) => {
            let f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
            let body = reqwest::Body::wrap_stream(chunks(f));
            client.post_body(path, body).await.with_context(|| format!("pushing {}", file.display()))?
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
            let uploaded = client.post_body(path, reqwest::Body::wrap_stream(chunks(stdout))).await;
            let done = child.wait_with_output().await.context("docker save")?;
            if !done.status.success() {
                bail!("docker save {image} failed: {}", String::from_utf8_lossy(&done.stderr).trim());
            }
            uploaded?
        }
        (None, None) => bail!("name an image (corral image push IMAGE) or a `docker save` tarball (--file FILE)"),
    };
    for i in &stored {
        let whose = match &i.project {
            Some(p) => format!("project {p}"),
            None => "every project".to_owned(),
        };
        writeln!(out, "pushed {} for {whose} ({} layer(s), {})", i.name, i.layers, mib(i.size))?;
    }
    Ok(0)
}
