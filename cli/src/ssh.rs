//! `ssh RUN` with the user's own OpenSSH client. `corral attach` writes a `Host RUN` entry to
//! Corral's SSH config file (included from `~/.ssh/config`) whose `ProxyCommand` is `corral
//! ssh-proxy`: it opens `GET .../ssh` through the coordinator, where the run's node serves SSH for
//! the container itself over its own link. The user's key pair (or one Corral makes) logs in.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use crate::client::{Client, write_private};

/// Where the SSH files are: the user's `~/.ssh`, and Corral's own directory (beside the CLI's
/// config file) for its config file and, when the user has no usable key, its key.
#[derive(Clone, Debug)]
pub struct SshFiles {
    /// `~/.ssh`
    pub user: PathBuf,
    pub corral: PathBuf,
    /// The `corral` binary the `ProxyCommand` runs.
    pub exe: PathBuf,
}

impl SshFiles {
    pub fn from_env() -> anyhow::Result<Self> {
        let home = std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?;
        let config = crate::client::config_path().context("no config dir: set HOME or CORRAL_CONFIG")?;
        let corral = config.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf).join("ssh");
        let exe = std::env::current_exe().context("cannot tell where the corral binary is")?;
        Ok(Self { user: home.join(".ssh"), corral, exe })
    }

    /// The private key `ssh RUN` logs in with: the user's own ed25519 or ECDSA key when there is
    /// one (with its `.pub`), otherwise one Corral makes with `ssh-keygen` and keeps.
    pub fn identity(&self) -> anyhow::Result<PathBuf> {
        for name in ["id_ed25519", "id_ecdsa"] {
            let key = self.user.join(name);
            if key.is_file() && public_of(&key).is_file() {
                return Ok(key);
            }
        }
        let key = self.corral.join("id_ed25519");
        if key.is_file() && public_of(&key).is_file() {
            return Ok(key);
        }
        std::fs::create_dir_all(&self.corral).with_context(|| format!("cannot create {}", self.corral.display()))?;
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral", "-f"])
            .arg(&key)
            .stdin(std::process::Stdio::null())
            .status()
            .context("no ed25519 or ECDSA key in ~/.ssh, and ssh-keygen (OpenSSH) could not be run to make one")?;
        if !status.success() {
            bail!("ssh-keygen could not make a key at {} ({status})", key.display());
        }
        Ok(key)
    }

    /// Writes (or rewrites) the `Host` entry of a run's job and makes sure `~/.ssh/config`
    /// includes Corral's file. Returns the host name (`RUN`, or `RUN-K` for job K). The entry holds
    /// no secret: `ssh-proxy` finds the coordinator and token as every `corral` command does
    /// (`CORRAL_URL`/`CORRAL_TOKEN`, or the file `corral config` writes).
    pub fn write_config(&self, client: &Client, run: &str, job: u32, key: &Path) -> anyhow::Result<String> {
        std::fs::create_dir_all(&self.corral).with_context(|| format!("cannot create {}", self.corral.display()))?;
        let path = self.corral.join("config");
        let host = if job == 0 { run.to_owned() } else { format!("{run}-{job}") };
        let entry = format!(
            "Host {host}\n    HostName {run}\n    User root\n    IdentityFile \"{key}\"\n    IdentitiesOnly yes\n    \
             ProxyCommand \"{exe}\" ssh-proxy {run} --project {project} --job {job} --key \"{public}\"\n    \
             StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n    ServerAliveInterval 30\n",
            key = key.display(),
            exe = self.exe.display(),
            project = client.project,
            public = public_of(key).display(),
        );
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let mut text = without_host(&existing, &host);
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&entry);
        write_private(&path, &text)?;
        self.include(&path)?;
        Ok(host)
    }

    /// Puts `Include <path>` at the top of `~/.ssh/config` (an `Include` further down would
    /// belong to the `Host` block above it).
    fn include(&self, path: &Path) -> anyhow::Result<()> {
        let user = self.user.join("config");
        let line = format!("Include \"{}\"", path.display());
        let existing = match std::fs::read_to_string(&user) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", user.display())),
        };
        if existing.lines().any(|l| l.trim() == line) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.user).with_context(|| format!("cannot create {}", self.user.display()))?;
        write_private(&user, &format!("{line}\n\n{existing}"))
    }
}

fn public_of(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// The config text without the block of `Host <host>`.
fn without_host(text: &str, host: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("Host ") {
            skipping = rest.trim() == host;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `corral ssh-proxy RUN --key KEY.pub`: the `ProxyCommand` of `ssh RUN`. Pipes this process's
/// input and output to the SSH server the run's node serves for the container.
pub async fn proxy(client: &Client, run: &str, job: u32, public_key: &Path) -> anyhow::Result<i32> {
    let key = std::fs::read_to_string(public_key)
        .with_context(|| format!("cannot read the public key {}", public_key.display()))?;
    let stream = client.ssh(run, job, key.trim()).await?;
    let (mut from_node, mut to_node) = tokio::io::split(stream);
    let upstream = tokio::spawn(async move {
        let mut stdin = crate::exec::detached_stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_node).await;
        let _ = to_node.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let copied = tokio::io::copy(&mut from_node, &mut stdout).await;
    let _ = stdout.flush().await;
    upstream.abort();
    copied.context("the SSH connection through the coordinator broke")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_block_is_replaced_and_others_kept() {
        let text = "Host a\n    HostName a\nHost b\n    HostName b\n";
        assert_eq!(without_host(text, "a"), "Host b\n    HostName b\n");
        assert_eq!(without_host(text, "b"), "Host a\n    HostName a\n");
        assert_eq!(without_host(text, "c"), text);
    }
}
