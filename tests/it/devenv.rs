//! Dev environments: the container stays up after `init`; the system OpenSSH client reaches it
//! through `corral ssh-proxy`, the coordinator and the agent's own link (no sshd in the image);
//! `inactivity_duration` stops it once no one is connected; `exec -t` gives a terminal.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use corral_cli::ssh::SshFiles;
use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

const CLI: &str = env!("CARGO_BIN_EXE_corral-test-cli");

/// A program the user runs (ssh, scp, sftp, script), with the CLI's settings in its environment
/// (the `ProxyCommand` inherits them) and no input unless the test gives some.
fn user_command(c: &OneNode, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("CORRAL_URL", format!("http://{}", c.coord.http))
        .env("CORRAL_TOKEN", &c.coord.admin_token)
        .env("CORRAL_CONFIG", c.dir.path().join("cli.json"))
        .stdin(std::process::Stdio::null());
    cmd
}

/// `ssh -F <home>/.ssh/config HOST ARGS...` as a user would type `ssh HOST`, with the CLI's
/// settings in ssh's environment (the `ProxyCommand` inherits it).
fn ssh(c: &OneNode, files: &SshFiles, host: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = user_command(c, "ssh")
        .arg("-F")
        .arg(files.user.join("config"))
        .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", host])
        .args(args)
        .output()?;
    Ok(out)
}

fn files_in(dir: &Path) -> SshFiles {
    SshFiles { user: dir.join("home/.ssh"), corral: dir.join("corral-ssh"), exe: CLI.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_with_the_system_client_reaches_a_dev_environment() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: dev-environment\nname: dev\nimage: {IMAGE}\nide: vscode\nenv:\n  - GREETING=hello\ninit:\n  - echo prepared > /tmp/init-ran\n  - mkdir -p /www && echo forwarded > /www/index.html\n  - httpd -p 8000 -h /www\n"
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "dev", &text), true).await?;
    assert_eq!(code, 0);
    wait_state(&c.client, "dev", |r| r.jobs.iter().all(|j| j.state == JobState::Running), Duration::from_secs(30))
        .await?;

    // The user's ~/.ssh/config gets an Include of Corral's file; a key is made (the user has none).
    let files = files_in(c.dir.path());
    std::fs::create_dir_all(&files.user)?;
    std::fs::write(files.user.join("config"), "Host elsewhere\n    User me\n")?;
    let key = files.identity()?;
    let host = files.write_config(&c.client, "dev", 0, &key)?;
    assert_eq!(host, "dev");
    let user_config = std::fs::read_to_string(files.user.join("config"))?;
    assert!(user_config.starts_with("Include "), "the Include comes first: {user_config}");
    assert!(user_config.contains("Host elsewhere"), "the user's own entries are kept: {user_config}");
    files.write_config(&c.client, "dev", 0, &key)?;
    let ours = std::fs::read_to_string(files.corral.join("config"))?;
    assert_eq!(ours.matches("Host dev\n").count(), 1, "writing again replaces the entry: {ours}");

    let out = ssh(&c, &files, "dev", &["cat /tmp/init-ran; echo $GREETING; echo err >&2"])?;
    assert!(
        out.status.success(),
        "ssh failed: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "prepared\nhello\n", "init ran, the run's env is set");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    // The command's exit code is ssh's.
    let out = ssh(&c, &files, "dev", &["exit 3"])?;
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));

    // No command: a login shell, here in a terminal (`-tt`), fed from input.
    let mut shell = user_command(&c, "ssh")
        .arg("-F")
        .arg(files.user.join("config"))
        .args(["-o", "BatchMode=yes", "-tt", "dev"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = shell.stdin.take().expect("piped");
        stdin.write_all(b"test -t 0 && echo \"tty $((6*7))\"; exit 4\n")?;
    }
    let out = shell.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tty 42"), "the shell ran the input in a terminal: {stdout:?} {out:?}");
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    // Another key is not let in: the node accepts only the key the proxy named.
    let other = c.dir.path().join("other_key");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status()?;
    assert!(made.success());
    let proxy = format!("ProxyCommand={CLI} ssh-proxy dev --key {}.pub", key.display());
    let out = user_command(&c, "ssh")
        .args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", &proxy, "-i"])
        .arg(&other)
        .args(["root@dev", "echo", "in"])
        .output()?;
    assert_ne!(out.status.code(), Some(0), "a key the node was not given logs in: {out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("in"), "{out:?}");

    // `ssh -L` (what IDEs use for the container's ports) reaches a server inside the container.
    let local = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut forward = user_command(&c, "ssh")
        .arg("-F")
        .arg(files.user.join("config"))
        .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-N", "-L"])
        .arg(format!("{local}:localhost:8000"))
        .arg("dev")
        .spawn()?;
    let url = format!("http://127.0.0.1:{local}/");
    let body = wait_for("the page through ssh -L", Duration::from_secs(20), || async {
        Ok(match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        })
    })
    .await;
    let _ = forward.kill();
    let _ = forward.wait();
    assert_eq!(body?, "forwarded\n");

    // scp both ways (SFTP, OpenSSH's default), into an image with no sftp-server.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let up = c.dir.path().join("up.bin");
    std::fs::write(&up, &payload)?;
    let scp = |from: &str, to: &str| -> anyhow::Result<Output> {
        Ok(user_command(&c, "scp")
            .arg("-F")
            .arg(files.user.join("config"))
            .args(["-o", "BatchMode=yes", "-q", from, to])
            .output()?)
    };
    let out = scp(&up.display().to_string(), "dev:/tmp/up.bin")?;
    assert!(out.status.success(), "scp up: {out:?}");
    let out = ssh(&c, &files, "dev", &["wc -c < /tmp/up.bin"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200000", "{out:?}");
    let down = c.dir.path().join("down.bin");
    let out = scp("dev:/tmp/up.bin", &down.display().to_string())?;
    assert!(out.status.success(), "scp down: {out:?}");
    assert!(std::fs::read(&down)? == payload, "the file came back as it went");
    let out = scp("dev:/no/such/file", &down.display().to_string())?;
    assert!(!out.status.success(), "a missing file fails scp: {out:?}");

    // Interactive sftp: rename, list, make and remove directories, remove files.
    let batch = c.dir.path().join("sftp.batch");
    std::fs::write(
        &batch,
        format!(
            "put {} /tmp/a.bin\nrename /tmp/a.bin /tmp/b.bin\nls /tmp\nmkdir /tmp/made\nrmdir /tmp/made\nrm /tmp/b.bin\n",
            up.display()
        ),
    )?;
    let out = user_command(&c, "sftp")
        .arg("-F")
        .arg(files.user.join("config"))
        .args(["-o", "BatchMode=yes", "-b"])
        .arg(&batch)
        .arg("dev")
        .output()?;
    assert!(out.status.success(), "sftp: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/tmp/b.bin"), "ls shows the renamed file: {out:?}");
    let out = ssh(&c, &files, "dev", &["ls /tmp/a.bin /tmp/b.bin /tmp/made 2>&1 | grep -c 'No such file'"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "all three are gone: {out:?}");

    // A dev environment stays up: it is still running after all this.
    let r = run(&c.client, "dev").await?;
    assert_eq!(r.jobs[0].state, JobState::Running);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_environment_stops_after_its_inactivity_duration_with_no_one_connected() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!("type: dev-environment\nname: idle\nimage: {IMAGE}\ninactivity_duration: 3s\n");
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "idle", &text), true).await?;
    assert_eq!(code, 0);
    wait_state(&c.client, "idle", |r| r.jobs.iter().all(|j| j.state == JobState::Running), Duration::from_secs(30))
        .await?;

    // A connection of 6 s (twice the limit) keeps it up.
    let sh = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
    let code =
        corral_cli::exec::exec(&c.client, "idle", 0, &sh("sleep 6"), None, &mut Vec::new(), &mut Vec::new()).await?;
    assert_eq!(code, 0);
    let r = run(&c.client, "idle").await?;
    assert_eq!(r.jobs[0].state, JobState::Running, "stopped while someone was connected");

    // Then, with no one connected, it stops within the limit and a moment.
    let r = wait_state(&c.client, "idle", |r| r.state.is_finished(), Duration::from_secs(15)).await?;
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::InactivityDurationExceeded));
    assert_eq!(r.jobs[0].state, JobState::Stopped);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal_gives_the_command_a_tty() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!("type: task\nname: term\nimage: {IMAGE}\ncommands:\n  - sleep 600\n");
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "term", &text), true).await?;
    assert_eq!(code, 0);
    wait_state(&c.client, "term", |r| r.jobs.iter().all(|j| j.state == JobState::Running), Duration::from_secs(30))
        .await?;
    // `script` gives the CLI a terminal of its own, as a user's shell would.
    let command = format!("{CLI} exec -t term -- sh -c 'test -t 0 && tty && exit 5'");
    let out = user_command(&c, "script").args(["-qec", &command, "/dev/null"]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/dev/pts/"), "the command has a terminal: {stdout:?} {out:?}");
    assert_eq!(out.status.code(), Some(5), "the command's exit code: {out:?}");
    Ok(())
}
