//! The container a run asks for: the base image when it names none, `python`, `shell`, `user`,
//! `privileged`, `entrypoint` — each as the user sees it, in the job's output.

use corral_coordinator::container::BaseImages;
use corral_proto::job::JobState;

use crate::harness::*;

/// A coordinator whose base images are the test images, as a site's mirror (or `corral image
/// push`) would serve dstack's: Python for plain runs, busybox for `nvcc: true`.
async fn with_base_images() -> anyhow::Result<OneNode> {
    let (python, _) = python_image();
    let dind = dind_image();
    OneNode::start_with(|c| {
        c.base_images = BaseImages { base: python.to_owned(), devel: IMAGE.to_owned(), dind: dind.to_owned() }
    })
    .await
}

/// An image that keeps dstack's docker-in-docker contract the way Corral relies on it: a
/// `start-dockerd` on the PATH that refuses to run unprivileged (exit 101, as dstack's does). The
/// Docker daemon inside is the image's business; what Corral owes it is the image, the privilege
/// and the call before the commands.
fn dind_image() -> &'static str {
    const DIND: &str = "corral-test/dind:latest";
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        ensure_image();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let script = "#!/bin/sh\n# Full capabilities or nothing: dockerd needs them.\ngrep -q '^CapEff:.*1ffffffffff$' /proc/self/status || { echo 'start-dockerd: the container is not privileged' >&2; exit 101; }\necho \"start-dockerd: dockerd is up\"\n";
        std::fs::write(dir.path().join("start-dockerd"), script).expect("writing start-dockerd");
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {IMAGE}\nCOPY start-dockerd /bin/start-dockerd\nRUN [\"/bin/chmod\", \"755\", \"/bin/start-dockerd\"]\n"),
        )
        .expect("writing the Dockerfile");
        let out = std::process::Command::new("docker")
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--quiet", "--tag", DIND])
            .arg(dir.path())
            .output()
            .expect("running docker build");
        assert!(out.status.success(), "building {DIND}: {}", String::from_utf8_lossy(&out.stderr));
    });
    DIND
}

/// Whether this host's Docker runs privileged containers (a sandboxed daemon may lack the
/// capabilities to grant).
fn privileged_allowed() -> bool {
    std::process::Command::new("docker")
        .args(["run", "--rm", "--privileged", "--network", "none", IMAGE, "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The run failed because Docker would not grant the capabilities, and its status says so.
async fn refused_for_caps(client: &corral_cli::client::Client, run_name: &str) -> anyhow::Result<()> {
    let r = run(client, run_name).await?;
    let job = &r.jobs[0];
    assert_eq!(job.termination_reason, Some(corral_proto::job::TerminationReason::ContainerCreationFailed), "{job:?}");
    assert!(job.status_message.as_deref().is_some_and(|m| m.contains("apply caps")), "{job:?}");
    Ok(())
}

/// The host's address on Docker's default bridge (its gateway, or the subnet's first address).
fn bridge_gateway() -> anyhow::Result<String> {
    let out = std::process::Command::new("docker")
        .args(["network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{.Subnet}}{{end}}"])
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let mut words = text.split_whitespace();
    let first = words.next().unwrap_or_default();
    if let Ok(ip) = first.parse::<std::net::Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    let (net, _) = first.split_once('/').ok_or_else(|| anyhow::anyhow!("Docker's bridge has no subnet: {text:?}"))?;
    let net: std::net::Ipv4Addr = net.parse()?;
    Ok(std::net::Ipv4Addr::from(u32::from(net) + 1).to_string())
}

/// The image a run's (first) container was made from, as Docker says.
async fn image_of(client: &corral_cli::client::Client, run_name: &str) -> anyhow::Result<String> {
    let r = run(client, run_name).await?;
    let image = r.jobs.first().and_then(|j| j.image.clone());
    Ok(image.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_an_image_runs_in_the_base_image_with_its_python() -> anyhow::Result<()> {
    let c = with_base_images().await?;
    let (python, version) = python_image();
    let file = write_config(
        c.dir.path(),
        "plain",
        &format!(
            "type: task\nname: plain\npython: \"{version}\"\ncommands:\n  - python3 -c 'import sys; print(\"python\", sys.version_info[:2])'\n  - echo \"shell=${{BASH_VERSION:+bash}}\"\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    let (major, minor) = version.split_once('.').unwrap_or_default();
    assert!(out.contains(&format!("python ({major}, {minor})")), "output was: {out}");
    // The image has bash: the commands ran in it.
    assert!(out.contains("shell=bash"), "output was: {out}");
    assert_eq!(image_of(&c.client, "plain").await?, python);

    // `nvcc: true` takes the devel image.
    let file = write_config(
        c.dir.path(),
        "devel",
        "type: task\nname: devel\nnvcc: true\npython: \"3.12\"\ncommands: [\"echo devel\"]\n",
    );
    let (_, _) = apply(&c.client, &file, false).await?;
    assert_eq!(image_of(&c.client, "devel").await?, IMAGE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_the_image_cannot_give_fails_the_job_saying_so() -> anyhow::Result<()> {
    let c = with_base_images().await?;
    let (_, version) = python_image();
    let other = if version == "3.9" { "3.10" } else { "3.9" };
    let file = write_config(
        c.dir.path(),
        "oldpy",
        &format!("type: task\nname: oldpy\npython: \"{other}\"\ncommands: [\"echo never\"]\n"),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 1, "output was: {out}");
    assert!(out.contains(&format!("this run asks for Python {other}")), "output was: {out}");
    assert!(out.contains("it has no uv") && out.contains(&format!("its python3 is {version}")), "output was: {out}");
    assert!(!out.contains("never"), "output was: {out}");
    assert_eq!(run(&c.client, "oldpy").await?.state, JobState::Failed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_privileged_shell_and_entrypoint_shape_the_container() -> anyhow::Result<()> {
    let c = with_base_images().await?;
    let (python, _) = python_image();
    let cases = [
        // `user`: a uid and gid.
        (
            "user",
            format!("image: {IMAGE}\nuser: \"1234:2345\"\ncommands: [\"echo uid=$(id -u) gid=$(id -g)\"]\n"),
            "uid=1234 gid=2345",
        ),
        // `shell: sh` in an image that has bash.
        ("sh", format!("image: {python}\nshell: sh\ncommands: [\"echo shell=${{BASH_VERSION:-sh}}\"]\n"), "shell=sh"),
        // `shell: bash` by name.
        (
            "bash",
            format!("image: {python}\nshell: bash\ncommands: [\"echo shell=${{BASH_VERSION:+bash}}\"]\n"),
            "shell=bash",
        ),
        // An image without bash: `sh` runs the commands.
        ("nobash", format!("image: {IMAGE}\ncommands: [\"echo shell=${{BASH_VERSION:-sh}}\"]\n"), "shell=sh"),
        // `entrypoint`: the commands are its arguments.
        (
            "entry",
            format!("image: {IMAGE}\nentrypoint: echo 'from the entrypoint:'\ncommands: [\"a b\", \"c\"]\n"),
            "from the entrypoint: a b c",
        ),
    ];
    for (name, body, expected) in &cases {
        let file = write_config(c.dir.path(), name, &format!("type: task\nname: {name}\n{body}"));
        let (code, out) = apply(&c.client, &file, false).await?;
        assert_eq!(code, 0, "{name}: output was: {out}");
        assert!(out.contains(expected), "{name}: expected {expected:?} in: {out}");
    }
    // `privileged`: every capability. A host whose Docker may not grant them (a sandbox without
    // them itself) refuses the container, and the user reads Docker's own words.
    let file = write_config(
        c.dir.path(),
        "privileged",
        &format!(
            "type: task\nname: privileged\nimage: {IMAGE}\nprivileged: true\ncommands: [\"grep CapEff /proc/self/status\"]\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    if privileged_allowed() {
        assert_eq!(code, 0, "output was: {out}");
        assert!(out.contains("CapEff:\t000001ff"), "output was: {out}");
    } else {
        eprintln!("this host's Docker refuses privileged containers: checking that the run says so");
        assert_ne!(code, 0, "output was: {out}");
        refused_for_caps(&c.client, "privileged").await?;
    }
    // Without `privileged`, the default capabilities only.
    let file = write_config(
        c.dir.path(),
        "plaincaps",
        &format!("type: task\nname: plaincaps\nimage: {IMAGE}\ncommands: [\"grep CapEff /proc/self/status\"]\n"),
    );
    let (_, out) = apply(&c.client, &file, false).await?;
    assert!(out.contains("CapEff:\t00000000a80425fb"), "output was: {out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_true_runs_the_dind_image_privileged_with_dockerd_started_first() -> anyhow::Result<()> {
    let c = with_base_images().await?;
    let file = write_config(
        c.dir.path(),
        "dind",
        "type: task\nname: dind\ndocker: true\ncommands: [\"echo then the commands\"]\n",
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(image_of(&c.client, "dind").await?, dind_image());
    if privileged_allowed() {
        assert_eq!(code, 0, "output was: {out}");
        assert!(out.contains("start-dockerd: dockerd is up\nthen the commands\n"), "output was: {out}");
    } else {
        // The container was asked for privileged: this host's Docker refuses it, in its words.
        eprintln!("this host's Docker refuses privileged containers: checking that the run says so");
        // (`start-dockerd` coming first is the shim's unit test.)
        assert_ne!(code, 0, "output was: {out}");
        refused_for_caps(&c.client, "dind").await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dstack_true_lets_a_run_call_the_coordinator_s_api() -> anyhow::Result<()> {
    // The coordinator listens where containers reach it: the host's side of Docker's bridge.
    let gateway = bridge_gateway()?;
    let port = std::net::TcpListener::bind("0.0.0.0:0")?.local_addr()?.port();
    let c = OneNode::start_with(|cfg| {
        cfg.http_listen = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        cfg.public_url = Some(format!("http://{gateway}:{port}"));
    })
    .await?;
    let file = write_config(
        c.dir.path(),
        "self-aware",
        &format!(
            "type: task\nname: self-aware\nimage: {IMAGE}\ndstack: true\nenv:\n  - CORRAL_TOKEN={token}\ncommands:\n  - echo \"project=$DSTACK_PROJECT url=$DSTACK_SERVER_URL\"\n  - 'n=0; until out=$(wget -qO- --header \"Authorization: Bearer $CORRAL_TOKEN\" \"$CORRAL_URL/api/projects/$CORRAL_PROJECT/runs/self-aware\") && echo \"$out\" | grep -q ''\"state\":\"running\"''; do n=$((n+1)); [ $n -lt 50 ] || break; sleep 0.2; done; echo \"$out\"'\n",
            token = c.coord.admin_token
        ),
    );
    // The container asks until its run reads `running`: its node's report of the start may reach
    // the coordinator after the container's first request.
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    assert!(out.contains(&format!("project=main url=http://{gateway}:{port}")), "output was: {out}");
    assert!(out.contains("\"name\":\"self-aware\"") && out.contains("\"state\":\"running\""), "output was: {out}");
    Ok(())
}

/// A registry on loopback that asks for Basic credentials and records the ones it is sent
/// (Docker treats 127.0.0.0/8 as an insecure registry: plain HTTP). It has no images.
pub(crate) async fn credential_recording_registry()
-> anyhow::Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                    match conn.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).into_owned();
                let auth = head.lines().find_map(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:").then(|| l[14..].trim().to_owned())
                });
                let reply = match auth {
                    None => "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"corral-test\"\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                    Some(a) => {
                        if let Ok(mut seen) = record.lock() {
                            seen.push(a);
                        }
                        let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
                        format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    }
                };
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((port, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_auth_reaches_the_registry_and_is_never_shown() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let (port, seen) = credential_recording_registry().await?;
    let file = write_config(
        c.dir.path(),
        "private",
        &format!(
            "type: task\nname: private\nimage: 127.0.0.1:{port}/team/private:1\nregistry_auth:\n  username: alice\n  password: s3cret\ncommands: [\"echo never\"]\n"
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_ne!(code, 0, "output was: {out}");
    let r = run(&c.client, "private").await?;
    assert_eq!(r.jobs[0].termination_reason, Some(corral_proto::job::TerminationReason::ImageUnavailable), "{r:?}");
    // Docker sent the run's credentials to the image's registry ...
    let sent = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(sent.iter().any(|a| a == "Basic YWxpY2U6czNjcmV0"), "the registry saw {sent:?}");
    // ... and the API never shows the password.
    let json = serde_json::to_string(&r)?;
    assert!(!json.contains("s3cret") && json.contains("alice"), "{json}");
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, true, None, &mut ps).await?;
    assert!(!String::from_utf8_lossy(&ps).contains("s3cret"));
    Ok(())
}
