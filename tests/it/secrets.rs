//! A project's secrets: `corral secret set|list|delete`, `${{ secrets.NAME }}` in a run's `env`
//! and `registry_auth` reaching the container and the registry, and nowhere else.

use corral_cli::SecretCommand;
use corral_proto::job::TerminationReason;

use crate::harness::*;

async fn secret(client: &corral_cli::client::Client, command: SecretCommand) -> anyhow::Result<String> {
    let mut out = Vec::new();
    corral_cli::secrets::secret(client, command, &mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Every file of the coordinator's data dir but the jobs' logs (a job may print its secret).
fn state_files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "logs") {
                    stack.push(path);
                }
            } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_container_and_the_registry_and_nothing_else() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let value = "hf_Zq8sW3cretValue";
    let said =
        secret(&c.client, SecretCommand::Set { name: "HF_TOKEN".into(), value: Some(value.into()), from_file: None })
            .await?;
    assert_eq!(said, "secret HF_TOKEN set in project main: use it as ${{ secrets.HF_TOKEN }}\n");
    let file = c.dir.path().join("registry-password");
    std::fs::write(&file, "s3cret-from-file")?;
    secret(&c.client, SecretCommand::Set { name: "REG_PASS".into(), value: None, from_file: Some(file) }).await?;

    let text = format!(
        "type: task\nname: uses-secret\nimage: {IMAGE}\nenv:\n  - TOKEN=${{{{ secrets.HF_TOKEN }}}}\n  - BOTH=a-${{{{secrets.HF_TOKEN}}}}-b\n  - LIT=$${{{{ kept }}}}\ncommands:\n  - echo \"token is [$TOKEN] [$BOTH] [$LIT]\"\n"
    );
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "uses-secret", &text), false).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(logs(&c.client, "uses-secret").await?, format!("token is [{value}] [a-{value}-b] [${{{{ kept }}}}]\n"));

    // `registry_auth` from a secret and the run's `env` (as NVIDIA's NIM configurations write it):
    // the registry sees the values, as Docker's Basic header.
    let (port, seen) = crate::runfields::credential_recording_registry().await?;
    let private = format!(
        "type: task\nname: private\nimage: 127.0.0.1:{port}/team/private:1\nenv:\n  - REG_USER=alice\nregistry_auth:\n  username: ${{{{ env.REG_USER }}}}\n  password: ${{{{ secrets.REG_PASS }}}}\ncommands: [\"echo never\"]\n"
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "private", &private), false).await?;
    assert_ne!(code, 0);
    let r = run(&c.client, "private").await?;
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::ImageUnavailable), "{r:?}");
    let sent = seen.lock().map(|s| s.clone()).unwrap_or_default();
    // base64("alice:s3cret-from-file"): the file's bytes as they are.
    assert!(sent.iter().any(|a| a == "Basic YWxpY2U6czNjcmV0LWZyb20tZmlsZQ=="), "the registry saw {sent:?}");

    // Nowhere else: not in the API's runs, not in `corral secret list`, not in the state on disk.
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, true, None, &mut ps).await?;
    let runs = serde_json::to_string(&run(&c.client, "uses-secret").await?)?;
    for shown in [String::from_utf8_lossy(&ps).into_owned(), runs] {
        assert!(!shown.contains(value) && !shown.contains("s3cret-from-file"), "{shown}");
    }
    let list = secret(&c.client, SecretCommand::List { json: true }).await?;
    let listed: Vec<corral_proto::api::Secret> = serde_json::from_str(&list)?;
    assert_eq!(listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["HF_TOKEN", "REG_PASS"]);
    assert!(!list.contains(value));
    let coord = c.dir.path().join("coord");
    assert_eq!(state_files_contain(&coord, value.as_bytes()), Vec::<std::path::PathBuf>::new());
    assert_eq!(state_files_contain(&coord, b"s3cret-from-file"), Vec::<std::path::PathBuf>::new());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(coord.join("secrets.key"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key is private to the coordinator's user");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_naming_a_secret_it_cannot_have_is_refused_saying_what_to_do() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let submit = |text: String| {
        let client = c.client.clone();
        async move {
            let configuration =
                corral_proto::config::parse(&text, "run.dstack.yml").map_err(|e| anyhow::anyhow!("{e}"))?;
            let req = corral_proto::api::SubmitRun { configuration, source: None, name: None };
            client.post::<_, corral_proto::api::Run>(&client.project_path("runs"), &req).await.map(|_| ())
        }
    };
    let missing =
        submit(format!("type: task\nimage: {IMAGE}\nenv:\n  - T=${{{{ secrets.NOT_SET }}}}\ncommands: [env]\n")).await;
    let e = missing.expect_err("refused").to_string();
    assert!(
        e.contains("secret \"NOT_SET\" is not set in project \"main\"") && e.contains("corral secret set NOT_SET"),
        "{e}"
    );

    secret(&c.client, SecretCommand::Set { name: "KEY".into(), value: Some("v".into()), from_file: None }).await?;
    let in_commands = submit(format!("type: task\nimage: {IMAGE}\ncommands:\n  - echo ${{{{ secrets.KEY }}}}\n")).await;
    let e = in_commands.expect_err("refused").to_string();
    assert!(e.contains("expanded only in env and registry_auth") && e.contains("KEY=${{ secrets.KEY }}"), "{e}");

    let no_var = submit(format!(
        "type: task\nimage: {IMAGE}\nregistry_auth:\n  username: u\n  password: ${{{{ env.NGC_API_KEY }}}}\ncommands: [env]\n"
    ))
    .await;
    let e = no_var.expect_err("refused").to_string();
    assert!(e.contains("registry_auth: ${{ env.NGC_API_KEY }} names no variable of the run's env"), "{e}");
    let no_var = submit(format!(
        "type: service\nimage: {IMAGE}\nport: 80\nprobes:\n  - type: http\n    url: /r?k=${{{{ env.NOPE }}}}\ncommands: [env]\n"
    ))
    .await;
    let e = no_var.expect_err("refused").to_string();
    assert!(e.contains("probes[0].url: ${{ env.NOPE }} names no variable of the run's env"), "{e}");

    // No interpolation reaches a container as written: one Corral does not expand there is refused.
    let unknown =
        submit(format!("type: task\nimage: {IMAGE}\nenv:\n  - N=${{{{ run.name }}}}\ncommands: [env]\n")).await;
    let e = unknown.expect_err("refused").to_string();
    assert!(e.contains("env[0]: ${{ run.name }}: not expanded here") && e.contains("$DSTACK_RUN_NAME"), "{e}");
    let unknown =
        submit(format!("type: task\nimage: {IMAGE}\nworking_dir: /w/${{{{ inputs.x }}}}\ncommands: [env]\n")).await;
    let e = unknown.expect_err("refused").to_string();
    assert!(e.contains("working_dir: ${{ inputs.x }}: not an interpolation Corral knows"), "{e}");

    let bad =
        secret(&c.client, SecretCommand::Set { name: "no.dots".into(), value: Some("v".into()), from_file: None });
    assert!(bad.await.expect_err("refused").to_string().contains("a secret's name is 1 to 128 of"));

    assert_eq!(secret(&c.client, SecretCommand::Delete { name: "KEY".into() }).await?, "secret KEY deleted\n");
    let again = secret(&c.client, SecretCommand::Delete { name: "KEY".into() }).await;
    assert!(again.expect_err("gone").to_string().contains("no secret \"KEY\" in project \"main\""));
    let after =
        submit(format!("type: task\nimage: {IMAGE}\nenv:\n  - T=${{{{ secrets.KEY }}}}\ncommands: [env]\n")).await;
    assert!(after.is_err(), "a deleted secret is refused at apply");
    // The refused submissions made no run.
    let runs: Vec<corral_proto::api::Run> =
        c.client.get(&format!("{}?all=true", c.client.project_path("runs"))).await?;
    assert!(runs.is_empty(), "{runs:?}");
    Ok(())
}

/// A probe's header may name the run's variables (`${{ env.KEY }}`, dstack's form), a secret's
/// value among them: the replica sees the value, and is ready only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_s_url_and_header_carry_the_run_s_variable() -> anyhow::Result<()> {
    let (python, _) = python_image();
    let c = OneNode::start().await?;
    secret(
        &c.client,
        SecretCommand::Set { name: "PROBE_KEY".into(), value: Some("k3y-v4lue".into()), from_file: None },
    )
    .await?;
    let text = format!(
        r#"type: service
name: keyed
image: {python}
port: 8000
auth: false
probes:
  - type: http
    url: /ready?k=${{{{ env.KEY }}}}
    interval: 1s
    headers:
      - name: X-Key
        value: ${{{{ env.KEY }}}}
env:
  - KEY=${{{{ secrets.PROBE_KEY }}}}
  - |
    SERVER=import socket, os
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('', 8000))
    s.listen(8)
    while True:
        c, _ = s.accept()
        lines = c.recv(65536).decode().split('\r\n')
        path = lines[0].split(' ')[1]
        key = next((l.split(':', 1)[1].strip() for l in lines if l.lower().startswith('x-key:')), None)
        open('/tmp/seen', 'a').write(path + ' ' + str(key) + '\n')
        ready = path == '/ready?k=' + os.environ['KEY'] and key == os.environ['KEY']
        status = '200 OK' if not path.startswith('/ready') or ready else '403 Forbidden'
        c.sendall(('HTTP/1.1 ' + status + '\r\nContent-Length: 7\r\nConnection: close\r\n\r\nserved\n').encode())
        c.close()
commands:
  - python3 -c "$SERVER"
"#
    );
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "keyed", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    let running = |r: &corral_proto::api::Run| r.jobs.iter().any(|j| j.state == corral_proto::job::JobState::Running);
    wait_state(&c.client, "keyed", running, std::time::Duration::from_secs(60)).await?;
    // A request waits for a ready replica: it is served once the probe, with its header, passed.
    let url = format!("http://{}/proxy/services/main/keyed/hello", c.coord.http);
    let body =
        tokio::time::timeout(std::time::Duration::from_secs(60), async { reqwest::get(&url).await?.text().await })
            .await??;
    assert_eq!(body, "served\n", "{:?} {}", run(&c.client, "keyed").await?.jobs, logs(&c.client, "keyed").await?);
    let mut seen = Vec::new();
    let cat = vec!["cat".to_owned(), "/tmp/seen".to_owned()];
    corral_cli::exec::exec(&c.client, "keyed", 0, &cat, None, &mut seen, &mut Vec::new()).await?;
    let seen = String::from_utf8(seen)?;
    assert!(seen.lines().any(|l| l == "/ready?k=k3y-v4lue k3y-v4lue"), "{seen}");
    Ok(())
}
