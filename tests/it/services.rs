//! Traffic into containers through the agent's own QUIC connection: forwarded ports (`corral
//! attach`) and services behind the coordinator's proxy, against real containers.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use corral_cli::attach::Forwarder;
use corral_proto::config::PortMapping;
use corral_proto::job::JobState;

use crate::harness::*;

/// A busybox web server on `port` whose index page says `text` (shell words, expanded).
fn httpd(port: u16, text: &str) -> String {
    format!("  - mkdir -p /www\n  - echo \"{text}\" > /www/index.html\n  - httpd -f -p {port} -h /www\n")
}

async fn all_running(client: &corral_cli::client::Client, name: &str) -> anyhow::Result<corral_proto::api::Run> {
    let running =
        |r: &corral_proto::api::Run| !r.jobs.is_empty() && r.jobs.iter().all(|j| j.state == JobState::Running);
    wait_state(client, name, running, Duration::from_secs(30)).await
}

/// GETs `url` until the server answers (a container's server takes a moment to listen).
async fn get_when_up(http: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<reqwest::Response> {
    wait_for(&format!("an answer from {url}"), Duration::from_secs(20), || async {
        let mut req = http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Ok(match req.send().await {
            Ok(r) if !r.status().is_server_error() => Some(r),
            _ => None,
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_port_reaches_an_http_server_in_a_task() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: task\nname: web\nimage: {IMAGE}\nports: [8080]\ncommands:\n{}",
        httpd(8080, "hello through the tunnel")
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "web", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "web").await?;

    let fwd = Forwarder::start(&c.client, "web", 0, &[PortMapping { local: None, container: 8080 }]).await?;
    let (local, _) = fwd.ports[0];
    let http = reqwest::Client::new();
    let resp = get_when_up(&http, &format!("http://{local}/index.html"), None).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await?, "hello through the tunnel\n");

    // A port nothing listens on: a clean error that says which port, and the tunnel closes.
    let e = c.client.tunnel("web", 0, 9999).await.expect_err("nothing listens on 9999");
    assert!(format!("{e:#}").contains("cannot connect to port 9999"), "{e:#}");
    // A run that is not running has nothing to connect to.
    let e = c.client.tunnel("nope", 0, 8080).await.expect_err("no such run");
    assert!(format!("{e:#}").contains("no run named \"nope\""), "{e:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_replicas_share_requests_behind_auth() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: service\nname: api\nimage: {IMAGE}\nport: 8000\nreplicas: 2\ncommands:\n{}",
        httpd(8000, "replica $CORRAL_JOB_ID")
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "api", &text), true).await?;
    assert_eq!(code, 0);
    let run = all_running(&c.client, "api").await?;
    let ids: BTreeSet<String> = run.jobs.iter().map(|j| format!("replica {}\n", j.id)).collect();
    assert_eq!(ids.len(), 2);

    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/api/index.html", c.coord.http);
    let refused = http.get(&url).send().await?;
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await?.contains("needs a Corral token"));
    let wrong = http.get(&url).bearer_auth("crl_wrong").send().await?;
    assert_eq!(wrong.status(), 401);

    // Both replicas answer; the prefix is stripped, so the server sees /index.html.
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let resp = get_when_up(&http, &url, Some(&c.coord.admin_token)).await?;
        assert_eq!(resp.status(), 200);
        seen.insert(resp.text().await?);
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, ids, "every replica takes requests");

    // A 404 from the application comes back as it is.
    let missing = http
        .get(format!("http://{}/proxy/services/main/api/missing.html", c.coord.http))
        .bearer_auth(&c.coord.admin_token)
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_round_trips_through_the_proxy() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // A tiny server that answers any request with `101 Switching Protocols`, then echoes bytes —
    // the shape of a WebSocket session, without a WebSocket library in the image.
    let text = format!(
        r#"type: service
name: echo
image: {IMAGE}
port: 8000
auth: false
commands:
  - |
    cat > /up.sh <<'EOF'
    #!/bin/sh
    while read -r l; do
      l=$(echo "$l" | tr -d '\r')
      [ -z "$l" ] && break
    done
    printf 'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n'
    exec cat
    EOF
  - chmod +x /up.sh
  - nc -ll -p 8000 -e /up.sh
"#
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "echo", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "echo").await?;

    let request =
        "GET /proxy/services/main/echo/ws HTTP/1.1\r\nHost: corral\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    let mut conn = wait_for("the echo server to switch protocols", Duration::from_secs(20), || async {
        let mut conn = tokio::net::TcpStream::connect(c.coord.http).await?;
        conn.write_all(request.as_bytes()).await?;
        let head = read_head(&mut conn).await?;
        Ok(head.starts_with("HTTP/1.1 101").then_some(conn))
    })
    .await?;
    for msg in ["ping\n", "a longer line, twice over a single connection\n"] {
        conn.write_all(msg.as_bytes()).await?;
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back)).await??;
        assert_eq!(String::from_utf8_lossy(&back), msg);
    }
    Ok(())
}

/// Reads an HTTP response head (up to the blank line).
async fn read_head(conn: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte)).await?? == 0 {
            break;
        }
        head.push(byte[0]);
        anyhow::ensure!(head.len() < 16 * 1024, "response head too long");
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_traffic_once_its_probe_passes() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // `/ready` appears 4 s after the server starts; the probe wants it twice in a row.
    let text = format!(
        "type: service\nname: slow\nimage: {IMAGE}\nport: 8000\nauth: false\nprobes:\n  - type: http\n    url: /ready\n    interval: 1s\n    ready_after: 2\ncommands:\n  - mkdir -p /www\n  - echo warm > /www/index.html\n  - (sleep 4; echo ok > /www/ready) &\n  - httpd -f -p 8000 -h /www\n"
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "slow", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "slow").await?;

    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/slow/", c.coord.http);
    let early = http.get(&url).send().await?;
    assert_eq!(early.status(), 503, "a replica whose probe has not passed takes no traffic");
    assert!(early.text().await?.contains("no ready replica"));
    let ready = wait_for("the probe to pass", Duration::from_secs(30), || async {
        let r = http.get(&url).send().await?;
        Ok((r.status() == 200).then_some(r))
    })
    .await?;
    assert_eq!(ready.text().await?, "warm\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_a_command_and_returns_its_exit_code() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text =
        format!("type: task\nname: box\nimage: {IMAGE}\ncommands:\n  - echo inside > /tmp/marker\n  - sleep 600\n");
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "box", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "box").await?;

    let sh = |script: &str| vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = corral_cli::exec::exec(
        &c.client,
        "box",
        0,
        &sh("cat /tmp/marker; echo oops >&2; exit 7"),
        None,
        &mut out,
        &mut err,
    )
    .await?;
    assert_eq!(code, 7);
    assert_eq!(String::from_utf8_lossy(&out), "inside\n");
    assert_eq!(String::from_utf8_lossy(&err), "oops\n");

    // Input reaches the command, and its end is the command's end of file.
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = Box::new(&b"one\ntwo\n"[..]);
    let mut out = Vec::new();
    let code =
        corral_cli::exec::exec(&c.client, "box", 0, &sh("wc -l"), Some(input), &mut out, &mut Vec::new()).await?;
    assert_eq!((code, String::from_utf8_lossy(&out).trim()), (0, "2"));

    // A command that does not exist: the container's own answer, and a failing code.
    let mut err = Vec::new();
    let code =
        corral_cli::exec::exec(&c.client, "box", 0, &["no-such-cmd".to_owned()], None, &mut Vec::new(), &mut err)
            .await?;
    assert_ne!(code, 0);
    Ok(())
}
