//! SSH into a job's container, served by the agent itself: the container needs no sshd, no key and
//! no package, and the node no open port. The coordinator opens a stream on the agent's connection
//! with `OpenSsh { job, authorized_keys }`; once this side answers `TunnelReply::Connected`, the
//! stream carries the SSH protocol between the user's own OpenSSH client (through `corral
//! ssh-proxy`) and the server here. Only the keys the user's CLI named may log in.
//!
//! A session channel runs its command (or a login shell) in the container with `docker exec`,
//! with a terminal when the client asked for one; `direct-tcpip` channels (`ssh -L`, VS Code's
//! port forwarding) connect to the container's ports.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{LineEnding, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::AsyncWriteExt;

use corral_proto::ids::JobId;
use corral_proto::wire::io::write_frame;
use corral_proto::wire::{AgentMessage, TunnelReply};
use corral_shim::ExecOutput;

use crate::jobs::Jobs;

/// The host key's file in the agent's state dir.
const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";
/// A login shell: bash where the image has it, sh otherwise.
const LOGIN_SHELL: &str = "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi";

/// The SSH server's settings, with this node's host key (made on first use, kept in the state dir).
pub fn server_config(state_dir: &Path) -> anyhow::Result<Arc<russh::server::Config>> {
    let path = state_dir.join(HOST_KEY_FILE);
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => PrivateKey::from_openssh(text.trim()).with_context(|| {
            format!("{} is not an OpenSSH private key (remove it to make a new one)", path.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
                .map_err(|_| anyhow::anyhow!("no randomness for the SSH host key"))?;
            let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
            let text = key.to_openssh(LineEnding::LF).context("cannot encode the SSH host key")?;
            std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
            write_private(&path, text.as_bytes())?;
            key
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(Arc::new(russh::server::Config {
        keys: vec![key],
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    }))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Serves one SSH connection on a stream the coordinator opened for `job`.
pub async fn serve(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    job_id: JobId,
    authorized_keys: Vec<String>,
    jobs: Arc<Jobs>,
) -> anyhow::Result<()> {
    let ready = match (jobs.ssh_config(), jobs.address(&job_id).await) {
        (None, _) => Err("SSH is not set up on this node (the agent has no host key)".to_owned()),
        (_, Err(why)) => Err(why),
        (Some(config), Ok(_)) => {
            let keys: Vec<PublicKey> =
                authorized_keys.iter().filter_map(|line| PublicKey::from_openssh(line.trim()).ok()).collect();
            if keys.is_empty() {
                Err("no usable public key was given for this SSH session".to_owned())
            } else {
                Ok((config, keys))
            }
        }
    };
    let (config, keys) = match ready {
        Ok(r) => r,
        Err(message) => {
            write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Failed { message })).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Connected)).await?;
    tracing::info!(job = %job_id, "ssh session");
    let handler = Handler { jobs, job_id, keys };
    let session = russh::server::run_stream(config, tokio::io::join(recv, send), handler).await?;
    session.await
}

struct Handler {
    jobs: Arc<Jobs>,
    job_id: JobId,
    keys: Vec<PublicKey>,
}

impl Handler {
    fn knows(&self, key: &PublicKey) -> bool {
        self.keys.iter().any(|k| k.key_data() == key.key_data())
    }
}

impl russh::server::Handler for Handler {
    type Error = anyhow::Error;

    async fn auth_publickey_offered(&mut self, _user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.knows(offer.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn auth_publickey(&mut self, _user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        Ok(if self.knows(key.public_key) { Auth::Accept } else { Auth::reject() })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let (jobs, job) = (self.jobs.clone(), self.job_id.clone());
        tokio::spawn(async move {
            if let Err(e) = session_channel(channel, &jobs, &job).await {
                tracing::debug!(%job, "ssh channel ended: {e:#}");
            }
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // "localhost" is the container itself: its address on the node.
        let ip = match self.jobs.address(&self.job_id).await {
            Ok(ip) if matches!(host, "localhost" | "127.0.0.1" | "::1" | "0.0.0.0") => ip,
            Ok(_) | Err(_) => {
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let Ok(port) = u16::try_from(port) else {
            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
            return Ok(());
        };
        match tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(SocketAddr::new(ip, port)))
            .await
        {
            Ok(Ok(mut tcp)) => {
                reply.accept().await;
                tokio::spawn(async move {
                    let mut stream = channel.into_stream();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
                });
            }
            _ => reply.reject(russh::ChannelOpenFailure::ConnectFailed).await,
        }
        Ok(())
    }

    // The requests below are carried out by the channel's task (`session_channel`), which sees
    // the same messages; here they are only acknowledged.
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" { Ok(session.channel_success(channel)?) } else { Ok(session.channel_failure(channel)?) }
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(session.channel_success(channel)?)
    }
}

/// What a session channel runs in the container.
struct Start {
    command: Vec<String>,
    /// (TERM, rows, cols) when the client asked for a terminal.
    pty: Option<(String, u16, u16)>,
    env: Vec<String>,
}

/// One session channel: collects the client's requests up to the one that starts something, runs
/// it in the container and pipes the channel to it until it exits.
async fn session_channel(mut channel: Channel<Msg>, jobs: &Jobs, job: &JobId) -> anyhow::Result<()> {
    let mut start = Start { command: Vec::new(), pty: None, env: Vec::new() };
    loop {
        match channel.wait().await {
            None | Some(ChannelMsg::Close | ChannelMsg::Eof) => return Ok(()),
            Some(ChannelMsg::RequestPty { term, col_width, row_height, .. }) => {
                start.pty = Some((term, clamp(row_height), clamp(col_width)));
            }
            Some(ChannelMsg::SetEnv { variable_name, variable_value, .. }) => {
                start.env.push(format!("{variable_name}={variable_value}"));
            }
            Some(ChannelMsg::Exec { command, .. }) => {
                start.command = vec!["sh".into(), "-c".into(), String::from_utf8_lossy(&command).into_owned()];
                break;
            }
            Some(ChannelMsg::RequestShell { .. }) => {
                start.command = vec!["sh".into(), "-c".into(), LOGIN_SHELL.into()];
                break;
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => {
                // Served here, through Docker's archive API: the image needs no sftp-server.
                let container = corral_shim::container_name(job);
                let home = jobs.shim().working_dir(&container).await.unwrap_or_else(|_| "/".to_owned());
                let sftp = crate::sftp::Sftp::new(jobs.shim().clone(), container, home);
                let (ours, theirs) = tokio::io::duplex(256 * 1024);
                russh_sftp::server::run(theirs, sftp).await;
                return subsystem(channel, ours).await;
            }
            Some(_) => {}
        }
    }
    let (mut read, write) = channel.split();
    let tty = start.pty.is_some();
    if let Some((term, ..)) = &start.pty {
        start.env.push(format!("TERM={term}"));
    }
    let size = start.pty.as_ref().map(|(_, rows, cols)| (*rows, *cols));
    let exec = match jobs.exec_in(job, start.command, tty, size, start.env).await {
        Ok(e) => e,
        Err(why) => {
            write.extended_data_bytes(1, format!("corral: {why}\r\n").into_bytes()).await?;
            write.exit_status(127).await?;
            write.eof().await?;
            write.close().await?;
            return Ok(());
        }
    };
    let corral_shim::Exec { id, mut output, mut input } = exec;
    let mut stdout = write.make_writer();
    let mut stderr = write.make_writer_ext(Some(1));
    let mut input_open = true;
    loop {
        tokio::select! {
            msg = read.wait(), if input_open => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if input.write_all(&data).await.is_err() {
                        input_open = false;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    // In a terminal, the end of input is the terminal's end-of-file key (^D): the
                    // shell reads what came before it, then exits. Hanging the terminal up
                    // instead would cut it off first.
                    let _ = if tty { input.write_all(&[4]).await } else { input.shutdown().await };
                    input_open = false;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Err(e) = jobs.shim().exec_resize(&id, clamp(row_height), clamp(col_width)).await {
                        tracing::debug!("resizing an ssh terminal: {e}");
                    }
                }
                // The client went away: the command keeps its end of file and ends on its own.
                None | Some(ChannelMsg::Close) => {
                    let _ = input.shutdown().await;
                    input_open = false;
                }
                Some(_) => {}
            },
            out = output.next() => match out {
                Some(Ok(ExecOutput::Stdout(data))) => stdout.write_all(&data).await?,
                Some(Ok(ExecOutput::Stderr(data))) => stderr.write_all(&data).await?,
                Some(Err(e)) => {
                    tracing::debug!("ssh command output: {e}");
                    break;
                }
                None => break,
            },
        }
    }
    stdout.flush().await?;
    stderr.flush().await?;
    let code = jobs.shim().exec_exit_code(&id).await.ok().flatten().unwrap_or(255);
    write.exit_status(u32::try_from(code).unwrap_or(255)).await?;
    write.eof().await?;
    write.close().await?;
    Ok(())
}

/// Pipes a session channel to a subsystem served in this process until the client's end of input
/// has ended it, then reports its exit status as a server's subsystem does.
async fn subsystem(channel: Channel<Msg>, server: tokio::io::DuplexStream) -> anyhow::Result<()> {
    let (mut read, write) = channel.split();
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let mut out = write.make_writer();
    let feed = async {
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Data { data } => to_server.write_all(&data).await?,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        to_server.shutdown().await
    };
    let drain = async {
        tokio::io::copy(&mut from_server, &mut out).await?;
        out.flush().await
    };
    let (fed, drained) = tokio::join!(feed, drain);
    fed?;
    drained?;
    write.exit_status(0).await?;
    write.eof().await?;
    write.close().await?;
    Ok(())
}

fn clamp(n: u32) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}
