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
async fn a_request_waits_for_a_replica_whose_probe_passes() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // The probe wants `/ready` twice in a row; nothing creates it until the test does.
    let text = format!(
        "type: service\nname: slow\nimage: {IMAGE}\nport: 8000\nauth: false\nprobes:\n  - type: http\n    url: /ready\n    interval: 1s\n    ready_after: 2\ncommands:\n{}",
        httpd(8000, "warm")
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "slow", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "slow").await?;

    let url = format!("http://{}/proxy/services/main/slow/", c.coord.http);
    let early = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!early.is_finished(), "a request is not served before a replica's probe passes");

    let ready = vec!["sh".to_owned(), "-c".to_owned(), "echo ok > /www/ready".to_owned()];
    let code = corral_cli::exec::exec(&c.client, "slow", 0, &ready, None, &mut Vec::new(), &mut Vec::new()).await?;
    assert_eq!(code, 0);
    let body = tokio::time::timeout(Duration::from_secs(30), early).await???;
    assert_eq!(body, "warm\n", "the waiting request is served once the probe passes");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_scales_up_under_load_then_to_zero_and_serves_a_cold_request() -> anyhow::Result<()> {
    use corral_proto::job::TerminationReason;
    let c = OneNode::start().await?;
    let text = format!(
        "type: service\nname: elastic\nimage: {IMAGE}\nport: 8000\nauth: false\nreplicas: 0..2\nscaling:\n  metric: rps\n  target: 1\n  window: 30s\n  scale_up_delay: 1s\n  scale_down_delay: 2s\ncommands:\n{}",
        httpd(8000, "elastic")
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "elastic", &text), true).await?;
    assert_eq!(code, 0);
    let r = all_running(&c.client, "elastic").await?;
    assert_eq!(r.jobs.len(), 1, "an autoscaled service comes up with one replica");

    // 60 requests: 2 per second over the 30 s window, against a target of 1 per replica.
    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/elastic/", c.coord.http);
    for _ in 0..60 {
        let resp = http.get(&url).send().await?;
        assert_eq!(resp.status(), 200);
    }
    let running = |r: &corral_proto::api::Run| r.jobs.iter().filter(|j| j.state == JobState::Running).count();
    wait_state(&c.client, "elastic", |r| running(r) == 2, Duration::from_secs(30)).await?;

    // No traffic: once the window is empty and the delay has passed, no replica is left, and the
    // service is still there.
    let idle =
        wait_state(&c.client, "elastic", |r| r.jobs.iter().all(|j| j.state.is_finished()), Duration::from_secs(90))
            .await?;
    assert_eq!(idle.state, JobState::Running, "a service scaled to zero is still running");
    assert!(idle.jobs.iter().all(|j| j.termination_reason == Some(TerminationReason::ScaledDown)), "{:?}", idle.jobs);
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, false, false, None, &mut ps).await?;
    assert!(String::from_utf8_lossy(&ps).contains("elastic"));

    // A cold request starts a replica and is served by it.
    let body =
        tokio::time::timeout(Duration::from_secs(60), async { http.get(&url).send().await?.text().await }).await??;
    assert_eq!(body, "elastic\n");
    let r = run(&c.client, "elastic").await?;
    assert_eq!(running(&r), 1);
    Ok(())
}

/// A service whose "model API" is a CGI script answering with its model name and what it saw.
fn model_service(name: &str, model: &str) -> String {
    format!(
        r#"type: service
name: {name}
image: {IMAGE}
port: 8000
model:
  type: chat
  name: {model}
  format: openai
  prefix: /cgi-bin/v1
commands:
  - mkdir -p /www/cgi-bin
  - |
    cat > /www/cgi-bin/v1 <<'EOF'
    #!/bin/sh
    body=$(head -c "$CONTENT_LENGTH")
    printf 'Content-Type: application/json\r\n\r\n'
    printf '{{"model": "{model}", "path": "%s", "method": "%s", "bytes": %s}}' "$PATH_INFO" "$REQUEST_METHOD" "${{#body}}"
    EOF
  - chmod +x /www/cgi-bin/v1
  - httpd -f -p 8000 -h /www
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_route_picks_the_service_by_the_model_field() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    for (name, model) in [("llm-a", "corral/alpha"), ("llm-b", "corral/beta")] {
        let (code, _) = apply(&c.client, &write_config(c.dir.path(), name, &model_service(name, model)), true).await?;
        assert_eq!(code, 0);
        all_running(&c.client, name).await?;
    }
    let http = reqwest::Client::new();
    let base = format!("http://{}/proxy/models/main/v1", c.coord.http);
    let token = &c.coord.admin_token;

    assert_eq!(http.get(format!("{base}/models")).send().await?.status(), 401);
    let list: serde_json::Value = http.get(format!("{base}/models")).bearer_auth(token).send().await?.json().await?;
    let mut ids: Vec<&str> = list["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["corral/alpha", "corral/beta"]);

    let request = serde_json::json!({"model": "corral/beta", "messages": [{"role": "user", "content": "hi"}]});
    let resp = wait_for("the model to answer", Duration::from_secs(20), || async {
        let r = http.post(format!("{base}/chat/completions")).bearer_auth(token).json(&request).send().await?;
        Ok((r.status() == 200).then_some(r))
    })
    .await?;
    let answer: serde_json::Value = resp.json().await?;
    assert_eq!(answer["model"], "corral/beta");
    assert_eq!(answer["path"], "/chat/completions");
    assert_eq!(answer["method"], "POST");
    assert_eq!(answer["bytes"].as_u64(), Some(request.to_string().len() as u64), "the body reaches the replica whole");

    let unknown = serde_json::json!({"model": "corral/gamma"});
    let resp = http.post(format!("{base}/chat/completions")).bearer_auth(token).json(&unknown).send().await?;
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await?.contains("corral/gamma"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_under_continuous_requests_drops_none() -> anyhow::Result<()> {
    use corral_proto::job::TerminationReason;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let c = OneNode::start().await?;
    let service = |version: &str| {
        // One CPU each: the node (2 cores) holds the old and the new replica side by side.
        format!(
            "type: service\nname: roll\nimage: {IMAGE}\nport: 8000\nauth: false\nresources:\n  cpu: 1\ncommands:\n{}",
            httpd(8000, version)
        )
    };
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "roll-v1", &service("v1")), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "roll").await?;
    let url = format!("http://{}/proxy/services/main/roll/", c.coord.http);
    get_when_up(&reqwest::Client::new(), &url, None).await?;

    // Two clients ask without pause through the whole update.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.spawn(async move {
            let http = reqwest::Client::new();
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = match http.get(&url).send().await {
                    Ok(r) => format!("{} {}", r.status().as_u16(), r.text().await.unwrap_or_default().trim()),
                    Err(e) => format!("error {e}"),
                };
                answers.push(answer);
            }
            answers
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "roll-v2", &service("v2")), true).await?;
    assert_eq!(code, 0, "applying a running service again deploys the new version");

    // The old deployment leaves once the new one is ready.
    wait_for("the old deployment to stop", Duration::from_secs(60), || async {
        let runs: Vec<corral_proto::api::Run> = c.client.get(&c.client.project_path("runs?all=true")).await?;
        let old: Vec<_> = runs.iter().filter(|r| r.name == "roll" && r.state.is_finished()).collect();
        Ok(old
            .first()
            .filter(|r| r.jobs.iter().all(|j| j.termination_reason == Some(TerminationReason::Redeployed)))
            .map(|_| ()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answers = Vec::new();
    while let Some(a) = clients.join_next().await {
        answers.extend(a?);
    }
    let failed: Vec<&String> = answers.iter().filter(|a| !a.starts_with("200 ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(answers.iter().any(|a| a == "200 v1") && answers.last().is_some_and(|a| a == "200 v2"), "{answers:?}");
    let r = run(&c.client, "roll").await?;
    assert_eq!((r.state, r.jobs.len()), (JobState::Running, 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answers_at_its_own_host_name_with_large_bodies_whole() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // A CGI that counts the bytes it is sent and answers with that many bytes back.
    let text = format!(
        r#"type: service
name: bytes
image: {IMAGE}
port: 8000
commands:
  - mkdir -p /www/cgi-bin
  - |
    cat > /www/cgi-bin/count <<'EOF'
    #!/bin/sh
    n=$(head -c "$CONTENT_LENGTH" | wc -c)
    printf 'Content-Type: text/plain\r\n\r\n'
    echo "got $n"
    head -c "$n" /dev/zero
    EOF
  - chmod +x /www/cgi-bin/count
  - httpd -f -p 8000 -h /www
"#
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "bytes", &text), true).await?;
    assert_eq!(code, 0);
    all_running(&c.client, "bytes").await?;

    // By host name: `bytes.<domain>`, any path, the path reaches the service as sent.
    let http = reqwest::Client::new();
    let body = vec![b'x'; 8 << 20];
    let url = format!("http://{}/cgi-bin/count", c.coord.http);
    let resp = wait_for("the service by host name", Duration::from_secs(20), || async {
        let r = http
            .post(&url)
            .header("host", "bytes.svc.corral.test")
            .bearer_auth(&c.coord.admin_token)
            .body(body.clone())
            .send()
            .await?;
        Ok((r.status() == 200).then_some(r))
    })
    .await?;
    let answer = resp.bytes().await?;
    let head = format!("got {}\n", 8 << 20);
    assert!(answer.starts_with(head.as_bytes()), "{:?}", String::from_utf8_lossy(&answer[..40.min(answer.len())]));
    assert_eq!(answer.len(), head.len() + (8 << 20), "8 MiB each way, whole");

    // Another host is the API as usual, and an unknown service under the domain is a clear 404.
    let other = http.get(format!("http://{}/api/health", c.coord.http)).send().await?;
    assert_eq!(other.text().await?, "ok");
    let unknown = http.get(&url).header("host", "nope.svc.corral.test").send().await?;
    assert_eq!(unknown.status(), 404);
    Ok(())
}
