//! `ssh_config` fleets, as dstack users write them: `corral apply` runs the install command on each
//! host over SSH (the system's OpenSSH client, the user's keys), with a join token scoped to the
//! fleet, and reports per host. Nothing is installed from the coordinator's side and no SSH access
//! is kept: the agents dial out from then on.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use corral_proto::api;
use corral_proto::config::{SshConfig, SshHost, SshProxy};

use crate::client::Client;

type Out<'a> = &'a mut (dyn Write + Send);

/// Hosts enrolled at once.
const PARALLEL: usize = 16;

/// One host's SSH command line, every field resolved against the fleet-wide ones.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    args: Vec<String>,
}

fn expand_home(path: &str) -> String {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest).display().to_string(),
        _ => path.to_owned(),
    }
}

/// Host names and users land on a command line: letters, digits and `.-_:[]%` only.
fn plain(what: &str, s: &str) -> anyhow::Result<()> {
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || ".-_:[]%".contains(c)) {
        bail!("ssh_config: {what} {s:?} is not a plain host or user name");
    }
    Ok(())
}

fn proxy_command(p: &SshProxy) -> anyhow::Result<String> {
    plain("proxy_jump.hostname", &p.hostname)?;
    plain("proxy_jump.user", &p.user)?;
    let mut cmd = format!(
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -i '{}' -W %h:%p",
        expand_home(&p.identity_file).replace('\'', "")
    );
    if let Some(port) = p.port {
        cmd.push_str(&format!(" -p {port}"));
    }
    cmd.push_str(&format!(" {}@{}", p.user, p.hostname));
    Ok(cmd)
}

fn targets(ssh: &SshConfig) -> anyhow::Result<Vec<Target>> {
    ssh.hosts
        .iter()
        .map(|h: &SshHost| {
            plain("hostname", &h.hostname)?;
            let mut args: Vec<String> =
                ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=15"]
                    .map(str::to_owned)
                    .to_vec();
            if let Some(port) = h.port.or(ssh.port) {
                args.extend(["-p".into(), port.to_string()]);
            }
            if let Some(key) = h.identity_file.as_ref().or(ssh.identity_file.as_ref()) {
                args.extend(["-i".into(), expand_home(key), "-o".into(), "IdentitiesOnly=yes".into()]);
            }
            if let Some(jump) = h.proxy_jump.as_ref().or(ssh.proxy_jump.as_ref()) {
                args.extend(["-o".into(), format!("ProxyCommand={}", proxy_command(jump)?)]);
            }
            let user = h.user.as_ref().or(ssh.user.as_ref());
            args.push(match user {
                Some(u) => {
                    plain("user", u)?;
                    format!("{u}@{}", h.hostname)
                }
                None => h.hostname.clone(),
            });
            Ok(Target { host: h.hostname.clone(), args })
        })
        .collect()
}

/// What runs on the host: the install command, through `sudo -n` when the user is not root (and a
/// clear refusal when it may not).
fn remote_command(url: &str, token: &str, name: &str) -> String {
    format!(
        "if [ \"$(id -u)\" != 0 ]; then \
           if ! sudo -n true 2>/dev/null; then \
             echo \"corral: user $(id -un) is not root and cannot sudo without a password: give it passwordless sudo, or enroll as root\" >&2; exit 3; \
           fi; \
           echo \"corral: user $(id -un) is not root: installing with sudo\"; S='sudo -n'; \
         fi; \
         curl -fsSLk '{url}/install.sh' | $S sh -s -- --token '{token}' --name '{name}'"
    )
}

/// The last line worth showing from a failed run's output.
fn last_error(text: &str) -> &str {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(no output)")
}

/// Enrolls every host of `ssh` into `fleet`. Returns how many failed.
pub async fn enroll(client: &Client, fleet: &str, ssh: &SshConfig, out: Out<'_>) -> anyhow::Result<usize> {
    let targets = targets(ssh)?;
    if client.url.contains('\'') {
        bail!("the coordinator URL {} cannot be passed to the hosts", client.url);
    }
    let token: api::JoinTokenInfo = client
        .post(
            "/api/tokens",
            &api::CreateJoinToken {
                fleet: Some(fleet.to_owned()),
                ttl_secs: Some(3600),
                uses: Some(targets.len() as u32),
            },
        )
        .await?;
    let token = token.token.context("the coordinator returned no token")?;
    writeln!(
        out,
        "enrolling {} host(s) over SSH into fleet {fleet}: {}",
        targets.len(),
        targets.iter().map(|t| t.host.as_str()).collect::<Vec<_>>().join(", ")
    )?;
    out.flush()?;

    // `CORRAL_SSH`: another ssh program (a wrapper with options of its own), as GIT_SSH.
    let program = std::env::var_os("CORRAL_SSH").unwrap_or_else(|| "ssh".into());
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut running = tokio::task::JoinSet::new();
    for t in targets {
        let (limit, command, program) = (limit.clone(), remote_command(&client.url, &token, &t.host), program.clone());
        running.spawn(async move {
            let _slot = limit.acquire_owned().await;
            let run = tokio::process::Command::new(&program).args(&t.args).arg(command).kill_on_drop(true).output();
            let result = tokio::time::timeout(Duration::from_secs(300), run).await;
            (t.host, result)
        });
    }
    let mut failed = 0;
    while let Some(done) = running.join_next().await {
        let (host, result) = done.context("an enrollment task failed")?;
        match result {
            Err(_) => {
                failed += 1;
                writeln!(out, "✗ {host}: no answer within 5 minutes")?;
            }
            Ok(Err(e)) => bail!("cannot run ssh (install the OpenSSH client): {e}"),
            Ok(Ok(o)) => {
                let stdout = String::from_utf8_lossy(&o.stdout);
                let stderr = String::from_utf8_lossy(&o.stderr);
                match o.status.code() {
                    Some(0) => {
                        writeln!(out, "✓ {host}")?;
                        for line in stdout.lines().filter(|l| l.starts_with("  ") || l.starts_with("corral: ")) {
                            writeln!(out, "    {}", line.trim_start())?;
                        }
                    }
                    Some(255) => {
                        failed += 1;
                        writeln!(out, "✗ {host}: cannot connect over SSH: {}", last_error(&stderr))?;
                    }
                    _ => {
                        failed += 1;
                        writeln!(out, "✗ {host}: {}", last_error(&stderr).trim_start_matches("corral-install: "))?;
                    }
                }
            }
        }
        out.flush()?;
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(yaml: &str) -> SshConfig {
        let text = format!("type: fleet\nname: rack\nssh_config:\n{yaml}");
        match corral_proto::config::parse(&text, "f.yml").expect("valid") {
            corral_proto::config::Configuration::Fleet(f) => f.ssh_config.expect("ssh_config"),
            _ => panic!("a fleet"),
        }
    }

    #[test]
    fn host_fields_override_the_fleet_ones() {
        let t = targets(&ssh(
            "  user: ubuntu\n  port: 2222\n  identity_file: /k\n  hosts:\n    - 10.0.0.1\n    - hostname: gpu-2\n      user: root\n      port: 22\n",
        ))
        .expect("valid");
        assert_eq!(t[0].host, "10.0.0.1");
        assert!(
            t[0].args.ends_with(&[
                "-p".into(),
                "2222".into(),
                "-i".into(),
                "/k".into(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "ubuntu@10.0.0.1".into()
            ]),
            "{:?}",
            t[0].args
        );
        assert!(
            t[1].args.ends_with(&[
                "-p".into(),
                "22".into(),
                "-i".into(),
                "/k".into(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "root@gpu-2".into()
            ]),
            "{:?}",
            t[1].args
        );
    }

    #[test]
    fn a_proxy_jump_becomes_a_proxy_command_and_odd_names_are_refused() {
        let t = targets(&ssh(
            "  hosts: [10.0.0.1]\n  proxy_jump:\n    hostname: bastion\n    user: me\n    port: 2200\n    identity_file: /j\n",
        ))
        .expect("valid");
        assert!(t[0].args.contains(&"ProxyCommand=ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -i '/j' -W %h:%p -p 2200 me@bastion".into()), "{:?}", t[0].args);
        assert!(targets(&ssh("  hosts: [\"a;rm -rf /\"]\n")).is_err());
    }
}
