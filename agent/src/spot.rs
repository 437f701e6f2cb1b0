//! Spot interruptions: on a cloud instance, the instance metadata service (IMDS) announces that the
//! cloud takes the instance back about two minutes ahead. The agent asks it every few seconds (its
//! token protocol, IMDSv2) and, once a notice appears, reports it; the coordinator interrupts the
//! node's jobs so that they run again elsewhere, per their `retry`. Where no metadata service
//! answers (on-prem), nothing is watched.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;

/// EC2's metadata service.
pub const DEFAULT_IMDS: &str = "http://169.254.169.254";
const EVERY: Duration = Duration::from_secs(2);

/// One request to the metadata service: (status, body).
async fn call(base: &str, method: &str, path: &str, header: (&str, &str)) -> anyhow::Result<(u16, String)> {
    let authority = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let tcp = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(&authority)).await??;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &authority)
        .header(header.0, header.1)
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `{"action": "terminate", "time": "2026-11-27T12:00:00Z"}` → (action, time).
fn parse_notice(body: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((v["action"].as_str()?.to_owned(), v["time"].as_str().unwrap_or_default().to_owned()))
}

/// Watches for an interruption notice until one comes (recorded on `jobs`, which the link
/// reports) or `shutdown`. Returns at once where no metadata service answers.
pub async fn watch(imds: String, jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let token = |imds: String| async move {
        call(&imds, "PUT", "/latest/api/token", ("x-aws-ec2-metadata-token-ttl-seconds", "300"))
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
            .map(|(_, t)| t)
    };
    if token(imds.clone()).await.is_none() {
        tracing::debug!(%imds, "no instance metadata service: not watching for spot interruptions");
        return;
    }
    tracing::info!(%imds, "watching the instance metadata service for spot interruptions");
    loop {
        tokio::select! {
            () = tokio::time::sleep(EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let Some(t) = token(imds.clone()).await else { continue };
        match call(&imds, "GET", "/latest/meta-data/spot/instance-action", ("x-aws-ec2-metadata-token", &t)).await {
            Ok((200, body)) => match parse_notice(&body) {
                Some((action, time)) => {
                    tracing::warn!(%action, %time, "spot interruption notice");
                    jobs.set_interruption(action, time);
                    return;
                }
                None => tracing::warn!("unreadable spot notice: {body}"),
            },
            Ok(_) => {} // 404: no notice
            Err(e) => tracing::debug!("instance metadata: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn notices_parse_as_ec2_writes_them() {
        let n = super::parse_notice(r#"{"action": "terminate", "time": "2026-11-27T12:00:00Z"}"#);
        assert_eq!(n, Some(("terminate".into(), "2026-11-27T12:00:00Z".into())));
        assert_eq!(super::parse_notice("not json"), None);
    }
}
