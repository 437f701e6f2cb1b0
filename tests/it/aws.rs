//! The AWS backend against a real EC2 emulator: `moto_server` (PyPI `moto[server,ec2]`), started
//! here on loopback; the coordinator, a real process, points the AWS SDK at it with
//! `AWS_ENDPOINT_URL`. `.ci/run` installs moto into `target/moto`; `MOTO_SERVER` names another.

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
         (what .ci/run does), or set MOTO_SERVER"
    );
}

/// `moto_server` on a loopback port of its own, killed on drop.
struct Moto {
    _proc: Proc,
    url: String,
}

async fn moto() -> anyhow::Result<Moto> {
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

struct Coord {
    _proc: Proc,
    http: String,
    quic: String,
    data: PathBuf,
}

/// The coordinator as a process with the AWS backend in `us-east-1`, its SDK pointed at `endpoint`.
async fn coordinator(dir: &Path, endpoint: &str) -> anyhow::Result<Coord> {
    let (http, quic) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let data = dir.join("coord");
    let proc = Proc(
        Command::new(COORDINATOR)
            .args(["--http-listen", &http, "--quic-listen", &quic, "--no-tls", "--aws-region", "us-east-1"])
            .arg("--data-dir")
            .arg(&data)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("HOME", dir)
            .env("CORRAL_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let url = format!("http://{http}/api/health");
    wait_until(Duration::from_secs(60), async || reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()))
        .await
        .context("the coordinator did not start")?;
    Ok(Coord { _proc: proc, http, quic, data })
}

fn cli(c: &Coord, args: &[&str]) -> anyhow::Result<Output> {
    let token = std::fs::read_to_string(c.data.join("admin-token"))?;
    Ok(Command::new(CLI)
        .args(args)
        .env("CORRAL_URL", format!("http://{}", c.http))
        .env("CORRAL_TOKEN", token.trim())
        .env("CORRAL_CONFIG", c.data.join("cli.json"))
        .output()?)
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
    let _agent = Proc(
        Command::new(AGENT)
            .args(["--coordinator", &c.quic, "--token", token.trim(), "--name", "rack-1", "--no-self-upgrade"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--nvml-library")
            .arg(state.join("no-libnvidia-ml.so"))
            .env("CORRAL_LOG", "warn")
            .spawn()?,
    );
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
