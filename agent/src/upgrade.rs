//! Self-upgrade. The agent reports its version with its binary's digest (`0.1.0+3fa2b1c9d0e1`);
//! when the coordinator serves another binary it says [`CoordinatorMessage::Upgrade`], and the agent:
//!
//! 1. fetches the binary over its QUIC link and checks its SHA-256;
//! 2. runs it with `--check`: it must start and be accepted by the coordinator with this node's
//!    identity, or the upgrade stops here and nothing changes;
//! 3. renames itself to `corral-agent.prev`, the new binary into its place, writes a marker
//!    (`upgrade.json` in the state dir) and re-executes itself (same process id; containers keep
//!    running and are re-adopted);
//! 4. the new binary removes the marker once connected. Still there after the deadline (the new
//!    binary cannot reconnect, or keeps crashing under systemd): the previous binary is put back and
//!    run.
//!
//! Agents embedded in another program (tests) never upgrade: only [`enable`] turns it on.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use corral_proto::wire::AgentMessage;
use corral_proto::wire::io::write_frame;

use crate::link::VERSION;

/// How long a new binary has to connect before the previous one is put back.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(120);

static VERSION_WITH_DIGEST: OnceLock<String> = OnceLock::new();
static UPGRADER: OnceLock<Upgrader> = OnceLock::new();

/// What this agent reports as its version: `VERSION+<first 12 hex digits of its binary's SHA-256>`
/// once [`enable`] ran, the bare version otherwise (such agents are never asked to upgrade).
pub fn agent_version() -> String {
    VERSION_WITH_DIGEST.get().cloned().unwrap_or_else(|| VERSION.to_owned())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// The marker a swap leaves for the new binary.
#[derive(Serialize, Deserialize)]
struct Marker {
    /// Where the previous binary was kept.
    prev: PathBuf,
    /// The binary that must confirm.
    exe: PathBuf,
    from_version: String,
    /// Unix seconds after which the previous binary comes back.
    deadline: u64,
}

struct Upgrader {
    exe: PathBuf,
    args: Vec<OsString>,
    state_dir: PathBuf,
    busy: AtomicBool,
}

/// Turns self-upgrade on for this process (the `corral-agent` command does; embedded agents do
/// not): computes the binary's digest, and handles a marker an upgrade left. May not return: a
/// marker past its deadline puts the previous binary back and executes it.
pub fn enable(state_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot tell where this program is")?;
    let digest = sha256_file(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let _ = VERSION_WITH_DIGEST.set(format!("{VERSION}+{}", &digest[..12]));
    let upgrader = Upgrader {
        exe,
        args: std::env::args_os().collect(),
        state_dir: state_dir.to_owned(),
        busy: AtomicBool::new(false),
    };
    let marker = marker_path(state_dir);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        match serde_json::from_str::<Marker>(&text) {
            Ok(m) if now_unix() > m.deadline => {
                tracing::error!(from = %m.from_version, "the upgraded agent did not connect in time: putting the previous binary back");
                roll_back(&m, &marker)?;
                return Err(upgrader.exec());
            }
            Ok(m) => {
                tracing::info!(from = %m.from_version, "upgraded; waiting to reach the coordinator");
                let wait = m.deadline.saturating_sub(now_unix()) + 1;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    if marker.exists() {
                        tracing::error!("the upgraded agent did not connect in time: putting the previous binary back");
                        match roll_back(&m, &marker) {
                            Ok(()) => {
                                if let Some(u) = UPGRADER.get() {
                                    let e = u.exec();
                                    tracing::error!("cannot restart the previous binary: {e:#}");
                                }
                            }
                            Err(e) => tracing::error!("cannot roll back: {e:#}"),
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!("ignoring an unreadable {}: {e}", marker.display());
                let _ = std::fs::remove_file(&marker);
            }
        }
    }
    let _ = UPGRADER.set(upgrader);
    Ok(())
}

fn marker_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade.json")
}

/// Puts the previous binary back in place of a new one that failed.
fn roll_back(m: &Marker, marker: &Path) -> anyhow::Result<()> {
    let failed = m.exe.with_file_name("corral-agent.failed");
    std::fs::rename(&m.exe, &failed).with_context(|| format!("cannot move {} aside", m.exe.display()))?;
    std::fs::rename(&m.prev, &m.exe).with_context(|| format!("cannot restore {}", m.prev.display()))?;
    std::fs::remove_file(marker).context("cannot remove the upgrade marker")?;
    Ok(())
}

/// The coordinator accepted this binary: an upgrade that brought it here is done.
pub fn confirm() {
    if let Some(u) = UPGRADER.get() {
        let marker = marker_path(&u.state_dir);
        if marker.exists() {
            match std::fs::remove_file(&marker) {
                Ok(()) => tracing::info!(version = %agent_version(), "upgrade confirmed"),
                Err(e) => tracing::warn!("cannot remove {}: {e}", marker.display()),
            }
        }
    }
}

/// Handles `Upgrade` (in the background; one at a time). Ignored where upgrades are off.
pub fn requested(conn: quinn::Connection, version: String, sha256: String, size: u64) {
    let Some(u) = UPGRADER.get() else {
        tracing::warn!("the coordinator asks for an upgrade; this agent does not upgrade itself");
        return;
    };
    if u.busy.swap(true, Ordering::SeqCst) {
        return;
    }
    tokio::spawn(async move {
        tracing::info!(%version, %sha256, "upgrading");
        let e = match u.upgrade(&conn, &sha256, size).await {
            Ok(()) => u.exec(),
            Err(e) => e,
        };
        tracing::error!("upgrade to {version} failed, this binary stays: {e:#}");
        u.busy.store(false, Ordering::SeqCst);
    });
}

impl Upgrader {
    /// Fetches, checks and swaps in the new binary; the caller then executes it.
    async fn upgrade(&self, conn: &quinn::Connection, sha256: &str, size: u64) -> anyhow::Result<()> {
        let new = self.exe.with_file_name("corral-agent.new");
        let prev = self.exe.with_file_name("corral-agent.prev");
        self.fetch(conn, sha256, size, &new).await?;
        let check = tokio::process::Command::new(&new)
            .args(self.args.iter().skip(1))
            .arg("--check")
            .kill_on_drop(true)
            .output();
        let checked = tokio::time::timeout(Duration::from_secs(30), check).await;
        match checked {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => {
                let _ = std::fs::remove_file(&new);
                bail!(
                    "the new binary failed its check ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or_default()
                );
            }
            Ok(Err(e)) => {
                let _ = std::fs::remove_file(&new);
                bail!("the new binary does not run here: {e}");
            }
            Err(_) => {
                let _ = std::fs::remove_file(&new);
                bail!("the new binary's check did not finish within 30 s");
            }
        }
        let marker = Marker {
            prev: prev.clone(),
            exe: self.exe.clone(),
            from_version: agent_version(),
            deadline: now_unix() + CONFIRM_WITHIN.as_secs(),
        };
        std::fs::rename(&self.exe, &prev).with_context(|| format!("cannot move {} aside", self.exe.display()))?;
        if let Err(e) = std::fs::rename(&new, &self.exe) {
            let _ = std::fs::rename(&prev, &self.exe);
            return Err(e).with_context(|| format!("cannot put the new binary at {}", self.exe.display()));
        }
        std::fs::write(marker_path(&self.state_dir), serde_json::to_string(&marker)?)
            .context("cannot write the upgrade marker")?;
        // A clean close: the coordinator sees the agent leave, not a lost node.
        conn.close(0u32.into(), b"upgrading");
        Ok(())
    }

    async fn fetch(&self, conn: &quinn::Connection, sha256: &str, size: u64, to: &Path) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &AgentMessage::FetchAgent { sha256: sha256.to_owned() }).await?;
        let _ = send.finish();
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o755).open(to);
            tokio::fs::File::from_std(f.with_context(|| format!("cannot write {}", to.display()))?)
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut got = 0u64;
        while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
            got += chunk.bytes.len() as u64;
            if got > size {
                bail!("the coordinator sent more than the {size} bytes it announced");
            }
            digest.update(&chunk.bytes);
            file.write_all(&chunk.bytes).await?;
        }
        file.flush().await?;
        let hex: String = digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        if got != size || hex != sha256 {
            let _ = std::fs::remove_file(to);
            bail!("the binary received ({got} bytes, SHA-256 {hex}) is not the one announced ({size} bytes, {sha256})");
        }
        Ok(())
    }

    /// Replaces this process with the binary at `exe` (same arguments, same process id).
    fn exec(&self) -> anyhow::Error {
        use std::os::unix::process::CommandExt;
        tracing::info!(exe = %self.exe.display(), "restarting");
        let e = std::process::Command::new(&self.exe).args(self.args.iter().skip(1)).exec();
        anyhow::Error::new(e).context(format!("cannot execute {}", self.exe.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_upgrade_is_rolled_back_to_the_previous_binary() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (exe, prev) = (dir.path().join("corral-agent"), dir.path().join("corral-agent.prev"));
        std::fs::write(&exe, "new")?;
        std::fs::write(&prev, "old")?;
        let marker = dir.path().join("upgrade.json");
        let m = Marker { prev: prev.clone(), exe: exe.clone(), from_version: "0.1.0+aaaa".into(), deadline: 0 };
        std::fs::write(&marker, serde_json::to_string(&m)?)?;
        roll_back(&m, &marker)?;
        assert_eq!(std::fs::read_to_string(&exe)?, "old");
        assert_eq!(std::fs::read_to_string(dir.path().join("corral-agent.failed"))?, "new");
        assert!(!prev.exists() && !marker.exists());
        Ok(())
    }
}
