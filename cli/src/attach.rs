//! `corral attach RUN`: forwards a run's ports to this machine and sets up `ssh RUN`. Each local
//! connection becomes one tunnel through the coordinator (`GET .../tunnel`, HTTP upgrade) and the
//! agent's own QUIC connection to the container's port: the node needs no inbound port. SSH rides
//! the same way ([`crate::ssh`]).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use corral_proto::api;
use corral_proto::config::{Configuration, Ide, PortMapping};
use corral_proto::job::JobState;

use crate::client::Client;

type Out<'a> = &'a mut (dyn Write + Send);

/// Local listeners, each forwarding to a container port; dropping it stops them all.
pub struct Forwarder {
    /// (where this machine listens, the container port it reaches)
    pub ports: Vec<(SocketAddr, u16)>,
    tasks: JoinSet<()>,
}

impl Forwarder {
    /// Binds `127.0.0.1:<local>` for each mapping (`local: None`: any free port) and serves every
    /// connection through its own tunnel.
    pub async fn start(client: &Client, run: &str, job: u32, mappings: &[PortMapping]) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let mut ports = Vec::new();
        for m in mappings {
            let want = SocketAddr::from(([127, 0, 0, 1], m.local.unwrap_or(0)));
            let listener = TcpListener::bind(want)
                .await
                .with_context(|| format!("cannot listen on {want} for port {}", m.container))?;
            ports.push((listener.local_addr()?, m.container));
            let (client, run, port) = (client.clone(), run.to_owned(), m.container);
            tasks.spawn(async move {
                let mut conns = JoinSet::new();
                while let Ok((mut local, _)) = listener.accept().await {
                    let (client, run) = (client.clone(), run.clone());
                    conns.spawn(async move {
                        let _ = local.set_nodelay(true);
                        match client.tunnel(&run, job, port).await {
                            Ok(mut remote) => {
                                let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
                            }
                            Err(e) => eprintln!("{run}: port {port}: {e:#}"),
                        }
                    });
                    // Reap what has finished, so a long session does not pile up handles.
                    while conns.try_join_next().is_some() {}
                }
            });
        }
        Ok(Self { ports, tasks })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The ports a run's configuration asks to forward.
fn configured_ports(cfg: &Configuration, job: u32) -> Vec<PortMapping> {
    match cfg {
        // A task with node groups: the ports of the job's own group.
        Configuration::Task(t) => t.for_rank(job).ports,
        Configuration::DevEnvironment(d) => d.ports.clone(),
        Configuration::Service(s) => vec![PortMapping { local: Some(s.port), container: s.port }],
        Configuration::Fleet(_) | Configuration::Volume(_) => Vec::new(),
    }
}

/// Sets up `ssh <host>` for the job (Corral's SSH config, included from `~/.ssh/config`); returns
/// the host name.
fn ssh_host(client: &Client, run: &str, job: u32) -> anyhow::Result<String> {
    let files = crate::ssh::SshFiles::from_env()?;
    let key = files.identity()?;
    files.write_config(client, run, job, &key)
}

fn ide_name(ide: Ide) -> &'static str {
    match ide {
        Ide::Vscode => "VS Code",
        Ide::Cursor => "Cursor",
        Ide::Windsurf => "Windsurf",
        Ide::Zed => "Zed",
    }
}

/// The link that opens the IDE on the dev environment over Remote-SSH (the `Host` written above).
pub fn ide_link(ide: Ide, host: &str, dir: &str) -> String {
    let dir = dir.trim_start_matches('/');
    match ide {
        Ide::Vscode => format!("vscode://vscode-remote/ssh-remote+{host}/{dir}"),
        Ide::Cursor => format!("cursor://vscode-remote/ssh-remote+{host}/{dir}"),
        Ide::Windsurf => format!("windsurf://vscode-remote/ssh-remote+{host}/{dir}"),
        Ide::Zed => format!("zed://ssh/{host}/{dir}"),
    }
}

/// Waits for the job to run, forwards the configured ports plus `extra`, and keeps forwarding until
/// the run ends or the user interrupts.
pub async fn attach(
    client: &Client,
    run: &str,
    job: u32,
    extra: Vec<PortMapping>,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let path = client.project_api(&["runs", run])?;
    let mut said = String::new();
    let r = loop {
        let r: api::Run = client.get(&path).await?;
        let Some(j) = r.jobs.iter().find(|j| j.job_num == job) else {
            bail!("run {run} has no job {job}");
        };
        if j.state == JobState::Running {
            break r;
        }
        if j.state.is_finished() {
            bail!("run {run} has ended ({}): nothing to attach to", j.state);
        }
        let line = match &j.status_message {
            Some(m) => format!("{}: {m}", j.state),
            None => j.state.to_string(),
        };
        if line != said {
            eprintln!("{run}: {line}");
            said = line;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut mappings = configured_ports(&r.configuration, job);
    mappings.extend(extra);
    let fwd = Forwarder::start(client, run, job, &mappings).await?;
    for (local, port) in &fwd.ports {
        writeln!(out, "forwarding {local} -> {run}:{port}")?;
    }
    let host = ssh_host(client, run, job)?;
    writeln!(out, "ssh: `ssh {host}` (also scp, rsync and IDEs over Remote-SSH)")?;
    if let Configuration::DevEnvironment(d) = &r.configuration
        && let Some(ide) = d.ide
    {
        let dir = d.working_dir.as_deref().unwrap_or("/");
        writeln!(out, "open in {}: {}", ide_name(ide), ide_link(ide, &host, dir))?;
    }
    out.flush()?;
    eprintln!("attached to {run}; Ctrl-C to detach");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(0),
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let r: api::Run = client.get(&path).await?;
        if r.state.is_finished() {
            eprintln!("run {run} {}", r.state);
            return Ok(0);
        }
    }
}
