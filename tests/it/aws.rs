//! The AWS backend against a real EC2 emulator: `moto_server` (PyPI `moto[server,ec2]`), started
//! here on loopback; the coordinator, a real process, points the AWS SDK at it with
//! `AWS_ENDPOINT_URL`. `scripts/test-deps.sh` installs moto into `target/moto`; `MOTO_SERVER` names
//! another.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context;

use corral_proto::api;
use corral_tests::procs::{Proc, free_port, wait_until};

use crate::harness::repo_root;

const COORDINATOR: &str = env!("CARGO_BIN_EXE_corral-test-coordinator");
const AGENT: &str = env!("CARGO_BIN_EXE_corral-test-agent");
const CLI: &str = env!("CARGO_BIN_EXE_corral-test-cli");

fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = repo_root().join("target/moto/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    panic!(
        "moto_server is missing: python3 -m venv target/moto && target/moto/bin/pip install 'moto[server,ec2]' \
         (what scripts/test-deps.sh does), or set MOTO_SERVER"
    );
}

/// `moto_server` on a loopback port of its own, killed on drop.
pub(crate) struct Moto {
    _proc: Proc,
    pub(crate) url: String,
}

pub(crate) async fn moto() -> anyhow::Result<Moto> {
    let port = free_port()?;
    let proc = Proc(
        Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start moto_server")?,
    );
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(30), async || tokio::net::TcpStream::connect(&addr).await.is_ok()).await?;
    Ok(Moto { _proc: proc, url: format!("http://{addr}") })
}

/// The coordinator as a process with the AWS backend in `us-east-1`, its SDK pointed at `endpoint`
/// (and instances told to fetch the install script from it), restartable on the same data.
pub(crate) struct Coord {
    proc: Option<Proc>,
    pub(crate) http: String,
    pub(crate) quic: String,
    pub(crate) data: PathBuf,
    home: PathBuf,
    endpoint: String,
    extra: Vec<String>,
}

impl Coord {
    pub(crate) async fn start(dir: &Path, endpoint: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self {
            proc: None,
            http: format!("127.0.0.1:{}", free_port()?),
            quic: format!("127.0.0.1:{}", free_port()?),
            data: dir.join("coord"),
            home: dir.to_owned(),
            endpoint: endpoint.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.restart().await?;
        Ok(c)
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        self.proc = Some(Proc(
            Command::new(COORDINATOR)
                .args([
                    "--http-listen",
                    &self.http,
                    "--quic-listen",
                    &self.quic,
                    "--no-tls",
                    "--aws-region",
                    "us-east-1",
                ])
                .args(["--public-url", &format!("http://{}", self.http)])
                .args(&self.extra)
                .arg("--data-dir")
                .arg(&self.data)
                .env("AWS_ENDPOINT_URL", &self.endpoint)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("HOME", &self.home)
                .env("CORRAL_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
        ));
        let url = format!("http://{}/api/health", self.http);
        wait_until(Duration::from_secs(60), async || reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()))
            .await
            .context("the coordinator did not start")
    }
}

async fn coordinator(dir: &Path, endpoint: &str) -> anyhow::Result<Coord> {
    Coord::start(dir, endpoint, &[]).await
}

pub(crate) fn cli(c: &Coord, args: &[&str]) -> anyhow::Result<Output> {
    let token = std::fs::read_to_string(c.data.join("admin-token"))?;
    Ok(Command::new(CLI)
        .args(args)
        .env("CORRAL_URL", format!("http://{}", c.http))
        .env("CORRAL_TOKEN", token.trim())
        .env("CORRAL_CONFIG", c.data.join("cli.json"))
        .output()?)
}

/// `corral apply -y [-d] -f NAME.dstack.yml` with `text`; fails with the CLI's error.
pub(crate) fn apply(c: &Coord, dir: &Path, name: &str, text: &str, detach: bool) -> anyhow::Result<()> {
    let file = crate::harness::write_config(dir, name, text);
    let mut args = vec!["apply", "-y", "-f", file.to_str().context("utf-8 path")?];
    if detach {
        args.push("-d");
    }
    let out = cli(c, &args)?;
    anyhow::ensure!(out.status.success(), "apply {name}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A real agent process: an on-prem node, or the node an (emulated, never booting) instance would be.
pub(crate) fn agent(quic: &str, token: &str, name: &str, state: &Path) -> anyhow::Result<Proc> {
    Ok(Proc(
        Command::new(AGENT)
            .args(["--coordinator", quic, "--token", token, "--name", name, "--no-self-upgrade"])
            .arg("--state-dir")
            .arg(state)
            .arg("--nvml-library")
            .arg(state.join("no-libnvidia-ml.so"))
            .env("CORRAL_LOG", "warn")
            .spawn()?,
    ))
}

/// An AMI the emulator knows (launches need one).
pub(crate) async fn emulator_ami(moto: &Moto) -> anyhow::Result<String> {
    xml_values(&ec2(moto, "Action=DescribeImages").await?, "imageId")
        .into_iter()
        .next()
        .context("an AMI in the emulator")
}

fn offers(c: &Coord, args: &[&str]) -> anyhow::Result<Vec<api::Offer>> {
    let mut all = vec!["offer", "--json"];
    all.extend_from_slice(args);
    let out = cli(c, &all)?;
    anyhow::ensure!(out.status.success(), "corral offer: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_put_on_prem_nodes_first_then_aws_instance_types_by_price() -> anyhow::Result<()> {
    let moto = moto().await?;
    let dir = tempfile::tempdir()?;
    let c = coordinator(dir.path(), &moto.url).await?;
    let state = dir.path().join("agent");
    let token = std::fs::read_to_string(c.data.join("join-token"))?;
    let _containers = crate::harness::ContainerGuard::for_state(&state);
    let _agent = agent(&c.quic, token.trim(), "rack-1", &state)?;
    wait_until(Duration::from_secs(30), async || offers(&c, &[]).is_ok_and(|o| o.iter().any(|o| o.name == "rack-1")))
        .await
        .context("the node's offer")?;

    let out = cli(&c, &["backend", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("aws") && text.contains("us-east-1") && text.contains("ok"), "{text}");

    // No GPU asked: the on-prem node first, at 0, then instance types cheapest first.
    let all = offers(&c, &[])?;
    assert_eq!((all[0].backend.as_str(), all[0].name.as_str(), all[0].price), ("on-prem", "rack-1", Some(0.0)));
    let priced: Vec<f64> = all.iter().skip(1).map_while(|o| o.price).collect();
    assert!(priced.len() > 10 && priced.windows(2).all(|w| w[0] <= w[1]), "by price: {priced:?}");

    // 8 A100s: p4d.24xlarge (described by the emulator, priced from the catalog); not the node.
    let a100 = offers(&c, &["--gpu", "A100:8"])?;
    let p4d = a100.iter().find(|o| o.name == "p4d.24xlarge").context("p4d.24xlarge offered")?;
    assert_eq!((p4d.gpu_count, p4d.gpu_name.as_deref(), p4d.price), (8, Some("A100"), Some(32.7726)));
    assert_eq!(p4d.region.as_deref(), Some("us-east-1"));
    assert!(a100.iter().all(|o| o.backend == "aws" && o.gpu_count == 8), "{a100:?}");
    // ...unless it costs more than asked.
    let cheap = offers(&c, &["--gpu", "A100:8", "--max-price", "30"])?;
    assert!(cheap.iter().all(|o| o.name != "p4d.24xlarge"), "{cheap:?}");

    // Spot: only types sold as spot, at the current spot price (the emulator's), not the catalog's.
    let spot = offers(&c, &["--gpu", "A100:8", "--spot"])?;
    let p4d = spot.iter().find(|o| o.name == "p4d.24xlarge").context("p4d.24xlarge as spot")?;
    assert!(p4d.spot && p4d.price.is_some_and(|p| p < 1.0), "{p4d:?}");

    // A table for people.
    let out = cli(&c, &["offer", "--gpu", "A100:8"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("p4d.24xlarge") && text.contains("8x A100 (40GB)") && text.contains("$32.7726"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_backend_that_does_not_answer_is_reported_not_fatal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Nothing listens there: every EC2 call fails at once.
    let c = coordinator(dir.path(), &format!("http://127.0.0.1:{}", free_port()?)).await?;
    let out = cli(&c, &["backend", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("error: us-east-1:"), "{text}");
    // Offers still answer (nothing on-prem here), and say what failed.
    let out = cli(&c, &["offer", "--gpu", "A100:8"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: aws us-east-1:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An EC2 query to the emulator (moto checks no signature; the credential scope names the region).
pub(crate) async fn ec2(moto: &Moto, query: &str) -> anyhow::Result<String> {
    let auth =
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0";
    let resp = reqwest::Client::new()
        .get(format!("{}/?Version=2016-11-15&{query}", moto.url))
        .header("Authorization", auth)
        .send()
        .await?;
    Ok(resp.text().await?)
}

/// Every `<tag>value</tag>` in an XML answer.
pub(crate) fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open).skip(1).filter_map(|rest| rest.split(&close).next().map(str::to_owned)).collect()
}

/// The fleet's live instances, as the emulator has them.
async fn fleet_instances(moto: &Moto, fleet: &str) -> anyhow::Result<Vec<String>> {
    let xml = ec2(
        moto,
        &format!(
            "Action=DescribeInstances&Filter.1.Name=tag:corral:fleet&Filter.1.Value.1={fleet}\
             &Filter.2.Name=instance-state-name&Filter.2.Value.1=pending&Filter.2.Value.2=running"
        ),
    )
    .await?;
    Ok(xml_values(&xml, "instanceId"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elastic_fleet_launches_its_minimum_its_instance_joins_and_a_restart_launches_nothing_more()
-> anyhow::Result<()> {
    let moto = moto().await?;
    let dir = tempfile::tempdir()?;
    let ami = emulator_ami(&moto).await?;
    let mut c = Coord::start(dir.path(), &moto.url, &["--aws-ami", &ami, "--elastic-every", "1s"]).await?;
    let (http, quic, data) = (c.http.clone(), c.quic.clone(), c.data.clone());

    apply(
        &c,
        dir.path(),
        "gpus",
        "type: fleet\nname: gpus\nnodes: 1..3\nbackends: [aws]\nresources:\n  gpu: A100:8\n",
        false,
    )?;

    // One instance (the minimum), of the cheapest type with 8 A100s, tagged as the fleet's.
    let ids = wait_for_instances(&moto, "gpus", 1).await?;
    let xml = ec2(&moto, &format!("Action=DescribeInstances&InstanceId.1={}", ids[0])).await?;
    assert_eq!(xml_values(&xml, "instanceType").first().map(String::as_str), Some("p4d.24xlarge"), "{xml}");
    let user_data = xml_values(
        &ec2(&moto, &format!("Action=DescribeInstanceAttribute&InstanceId={}&Attribute=userData", ids[0])).await?,
        "value",
    )
    .into_iter()
    .next()
    .context("user data recorded")?;
    let decoded = Command::new("sh").arg("-c").arg(format!("printf %s '{user_data}' | base64 -d")).output()?;
    let script = String::from_utf8(decoded.stdout)?;
    assert!(
        script.contains(&format!("curl -fsSLk 'http://{http}/install.sh' | sh -s -- --token 'corral1.")),
        "{script}"
    );
    let token = script.split("--token '").nth(1).and_then(|s| s.split('\'').next()).context("a token")?.to_owned();
    let node = script.split("--name '").nth(1).and_then(|s| s.split('\'').next()).context("a node name")?.to_owned();
    assert!(node.starts_with("gpus-"), "{node}");

    // Emulated instances do not boot: a real agent with that token plays the instance.
    let state = dir.path().join("agent");
    let _containers = crate::harness::ContainerGuard::for_state(&state);
    let _agent = agent(&quic, &token, &node, &state)?;
    let client = corral_cli::client::Client::new(
        &format!("http://{http}"),
        std::fs::read_to_string(data.join("admin-token"))?.trim(),
        "main",
    );
    wait_until(Duration::from_secs(30), async || {
        client.get::<Vec<api::Node>>("/api/nodes").await.is_ok_and(|nodes| {
            nodes
                .iter()
                .any(|n| n.name == node && n.fleet.as_deref() == Some("gpus") && n.status == api::NodeStatus::Ready)
        })
    })
    .await
    .context("the instance's node joined its fleet")?;
    // The token was for that one instance.
    let again = cli(&c, &["token", "list", "--json"])?;
    let tokens: Vec<api::JoinTokenInfo> = serde_json::from_slice(&again.stdout)?;
    assert!(tokens.iter().any(|t| t.fleet.as_deref() == Some("gpus") && t.uses_left == Some(0)), "{tokens:?}");

    // A coordinator restart reads the instances back from the cloud: nothing more is launched.
    c.restart().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(fleet_instances(&moto, "gpus").await?, ids, "no second instance");

    // Deleting the fleet terminates its instances.
    let out = cli(&c, &["fleet", "delete", "gpus", "-y"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(30), async || fleet_instances(&moto, "gpus").await.is_ok_and(|i| i.is_empty()))
        .await
        .context("the fleet's instance terminated")?;
    Ok(())
}

pub(crate) async fn wait_for_instances(moto: &Moto, fleet: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids = fleet_instances(moto, fleet).await?;
        if ids.len() >= n {
            return Ok(ids);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no {n} instance(s) of fleet {fleet} after 60 s: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The instance types of `ids`, in order.
async fn instance_types(moto: &Moto, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for id in ids {
        let xml = ec2(moto, &format!("Action=DescribeInstances&InstanceId.1={id}")).await?;
        out.push(xml_values(&xml, "instanceType").into_iter().next().unwrap_or_default());
    }
    Ok(out)
}

pub(crate) async fn user_data_args(moto: &Moto, id: &str) -> anyhow::Result<(String, String)> {
    let xml = ec2(moto, &format!("Action=DescribeInstanceAttribute&InstanceId={id}&Attribute=userData")).await?;
    let data = xml_values(&xml, "value").into_iter().next().context("user data recorded")?;
    let decoded = Command::new("sh").arg("-c").arg(format!("printf %s '{data}' | base64 -d")).output()?;
    let script = String::from_utf8(decoded.stdout)?;
    let arg =
        |flag: &str| script.split(&format!("{flag} '")).nth(1).and_then(|s| s.split('\'').next()).map(str::to_owned);
    Ok((arg("--token").context("a token")?, arg("--name").context("a name")?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_grows_for_queued_work_replaces_an_instance_that_never_enrolls_and_sheds_idle_ones()
-> anyhow::Result<()> {
    let moto = moto().await?;
    let dir = tempfile::tempdir()?;
    let ami = emulator_ami(&moto).await?;
    let c =
        Coord::start(dir.path(), &moto.url, &["--aws-ami", &ami, "--elastic-every", "1s", "--enroll-timeout", "4s"])
            .await?;
    let quic = c.quic.clone();
    let apply = |name: &str, text: &str| apply(&c, dir.path(), name, text, true);
    apply(
        "grow",
        "type: fleet\nname: grow\nnodes: 0..2\nbackends: [aws]\nidle_duration: 3s\nresources:\n  gpu: A100:8\n",
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(fleet_instances(&moto, "grow").await?.is_empty(), "minimum 0, nothing queued: nothing launched");

    // Work that fits the fleet's offers: an instance, the cheapest with 8 A100s.
    apply(
        "big",
        &format!(
            "type: task\nname: big\nimage: {}\nresources:\n  gpu: A100:8\ncommands:\n  - echo hi\n",
            crate::harness::IMAGE
        ),
    )?;
    let first = wait_for_instances(&moto, "grow", 1).await?;
    assert_eq!(instance_types(&moto, &first).await?, ["p4d.24xlarge"]);

    // It never enrolls: terminated after the timeout, and the next offer is tried.
    let second = wait_until_instances(&moto, "grow", |ids| ids.len() == 1 && ids != first.as_slice()).await?;
    assert_eq!(instance_types(&moto, &second).await?, ["p4de.24xlarge"], "the type that failed is avoided");

    // The work goes away; the instance's node joins, runs nothing, and is shed once idle (min 0).
    let out = cli(&c, &["stop", "big", "-y", "--abort"])?;
    anyhow::ensure!(out.status.success(), "stop: {}", String::from_utf8_lossy(&out.stderr));
    let (token, node) = user_data_args(&moto, &second[0]).await?;
    let state = dir.path().join("agent");
    let _containers = crate::harness::ContainerGuard::for_state(&state);
    let _agent = agent(&quic, &token, &node, &state)?;
    wait_until_instances(&moto, "grow", |ids| ids.is_empty()).await.context("the idle instance terminated")?;
    Ok(())
}

async fn wait_until_instances(
    moto: &Moto,
    fleet: &str,
    done: impl Fn(&[String]) -> bool,
) -> anyhow::Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids = fleet_instances(moto, fleet).await?;
        if done(&ids) {
            return Ok(ids);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "fleet {fleet} not as expected after 60 s: {ids:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A stand-in for EC2's instance metadata service: tokens, and a spot notice once `notice` is set.
async fn fake_imds(notice: std::sync::Arc<std::sync::atomic::AtomicBool>) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let notice = notice.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let (status, body) = if head.starts_with("PUT /latest/api/token") {
                    ("200 OK", "token-1".to_owned())
                } else if head.starts_with("GET /latest/meta-data/spot/instance-action")
                    && head.to_ascii_lowercase().contains("x-aws-ec2-metadata-token: token-1")
                    && notice.load(std::sync::atomic::Ordering::SeqCst)
                {
                    ("200 OK", r#"{"action": "terminate", "time": "2026-11-27T12:02:00Z"}"#.to_owned())
                } else {
                    ("404 Not Found", String::new())
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_notice_interrupts_the_nodes_jobs_and_they_run_elsewhere() -> anyhow::Result<()> {
    use crate::harness::{
        Agent, AgentOptions, Coordinator, IMAGE, apply, ensure_image, nodes_ready, wait_for, wait_state, write_config,
    };
    use corral_proto::job::JobState;
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let notice = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let imds = fake_imds(notice.clone()).await?;
    let _spot = Agent::start(
        &coord,
        &dir.path().join("spot"),
        AgentOptions { name: "spot-node".into(), imds_url: Some(imds), ..Default::default() },
    );
    nodes_ready(&client, 1).await?;
    let file = write_config(
        dir.path(),
        "resilient",
        &format!(
            "type: task\nname: resilient\nimage: {IMAGE}\nretry:\n  on_events: [interruption]\n  duration: 1h\ncommands:\n  - sleep 600\n"
        ),
    );
    assert_eq!(apply(&client, &file, true).await?.0, 0);
    let first = wait_state(&client, "resilient", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    assert_eq!(first.jobs[0].node_name.as_deref(), Some("spot-node"));

    // Another node, then the notice: the job is interrupted and runs again there.
    let _other = Agent::start(
        &coord,
        &dir.path().join("other"),
        AgentOptions { name: "on-demand".into(), ..Default::default() },
    );
    nodes_ready(&client, 2).await?;
    notice.store(true, std::sync::atomic::Ordering::SeqCst);
    let again = wait_state(
        &client,
        "resilient",
        |r| r.state == JobState::Running && r.jobs[0].submission == 1,
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(again.jobs[0].node_name.as_deref(), Some("on-demand"), "retried on the other node");
    // The interrupted copy was told to stop while its instance still lived.
    let old = format!("corral-{}", first.jobs[0].id);
    wait_for("the interrupted container to stop", Duration::from_secs(30), || async {
        Ok((!crate::harness::docker_running(&old)).then_some(()))
    })
    .await?;
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    assert!(nodes.iter().any(|n| n.name == "spot-node" && n.cordoned), "the interrupted node takes no new work");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_fleet_launches_spot_instances() -> anyhow::Result<()> {
    let moto = moto().await?;
    let dir = tempfile::tempdir()?;
    let ami = emulator_ami(&moto).await?;
    let c = Coord::start(dir.path(), &moto.url, &["--aws-ami", &ami, "--elastic-every", "1s"]).await?;
    let fleet = "type: fleet\nname: cheap\nnodes: 1\nbackends: [aws]\nspot_policy: spot\nresources:\n  gpu: A100:8\n";
    apply(&c, dir.path(), "cheap", fleet, false)?;
    let ids = wait_for_instances(&moto, "cheap", 1).await?;
    let xml = ec2(&moto, &format!("Action=DescribeInstances&InstanceId.1={}", ids[0])).await?;
    assert_eq!(xml_values(&xml, "instanceLifecycle").first().map(String::as_str), Some("spot"), "{xml}");
    Ok(())
}
