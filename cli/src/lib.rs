//! `corral`: the user's command line. Reads dstack-compatible configuration files and talks to the
//! coordinator's HTTP API only ([`client`]). Each verb lives in [`commands`].

pub mod attach;
pub mod bundle;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod exec;
pub mod groups;
pub mod images;
pub mod metrics;
pub mod nodeinfo;
pub mod offers;
pub mod output;
pub mod schedules;
pub mod secrets;
pub mod ssh;
pub mod sshfleet;
pub mod teams;
pub mod tls;
pub mod uploads;
pub mod volumes;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "corral", version, about = "Run tasks on your own GPU machines")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check configuration files without running anything (exit 0 when all are accepted).
    Validate {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// Submit a configuration; attached, stream its logs and exit with the task's exit code.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        /// Detach: submit and return.
        #[arg(short = 'd', long)]
        detach: bool,
        /// Run name (overrides `name:` in the file).
        #[arg(short = 'n', long)]
        name: Option<String>,
    },
    /// List runs, newest first: the active ones (`-a`: finished ones too), the newest 100
    /// (`--limit`).
    Ps {
        /// One run: its jobs, and the last things that happened to it (how its jobs ended, its
        /// retries, its GPUs' faults).
        run: Option<String>,
        /// Finished runs too.
        #[arg(short = 'a', long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Show at most this many runs (1 to 1000; default 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Print a run's logs; `-f` follows them until the run ends.
    Logs {
        run: String,
        #[arg(short = 'f', long)]
        follow: bool,
        /// Which job of a multi-node run (its rank).
        #[arg(long, default_value_t = 0)]
        job: u32,
    },
    /// What a run's jobs use: CPU, memory and, per GPU, utilization and memory, as their nodes
    /// last reported it.
    Metrics {
        run: String,
        /// Follow: read again every 2 s until the run ends.
        #[arg(short = 'w', long)]
        watch: bool,
        /// As JSON (with the last minutes' history).
        #[arg(long)]
        json: bool,
    },
    /// Stop a run: SIGTERM, then SIGKILL after its grace period (`--abort`: kill at once).
    Stop {
        run: String,
        #[arg(short = 'y', long)]
        yes: bool,
        #[arg(long)]
        abort: bool,
    },
    /// Forward a run's ports to this machine (its `ports`, a service's `port`, and `-p`), through
    /// the coordinator: the node needs no inbound port.
    Attach {
        run: String,
        /// Also forward these: `LOCAL:CONTAINER`, `PORT`, or `*:CONTAINER` for any free local port.
        #[arg(short = 'p', long = "port", value_parser = parse_port)]
        ports: Vec<corral_proto::config::PortMapping>,
        /// Which job of the run (a rank, or a service's replica).
        #[arg(long, default_value_t = 0)]
        job: u32,
    },
    /// Run a command in a run's container; exits with the command's exit code.
    Exec {
        run: String,
        /// Which job of the run (a rank, or a service's replica).
        #[arg(long, default_value_t = 0)]
        job: u32,
        /// Pass this terminal's input to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run it in a terminal (this one in raw mode, its size followed): for shells and editors.
        #[arg(short = 't', long)]
        tty: bool,
        /// The command and its arguments (after `--`).
        #[arg(required = true, last = true)]
        command: Vec<String>,
    },
    /// Nodes enrolled with the coordinator.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Who this token is: the user, its global role and its projects.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Users and their tokens (global admins).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Projects and their members: each run, fleet, volume and secret belongs to one.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// The audit trail: who applied, stopped, deleted or changed what, and when.
    Event(EventArgs),
    /// Join tokens for enrolling hosts; `--service RUN`: tokens that call one service.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// What runs could be placed on: on-prem nodes (price 0), then cloud instance types that fit,
    /// by price.
    Offer {
        /// e.g. `A100:8`, `24GB..`, `H100,A100:2..`.
        #[arg(long)]
        gpu: Option<String>,
        /// e.g. `8..`, `arm:4`.
        #[arg(long)]
        cpu: Option<String>,
        /// e.g. `64GB..`.
        #[arg(long)]
        memory: Option<String>,
        /// Spot instances, at their current price.
        #[arg(long)]
        spot: bool,
        /// US dollars per hour at most.
        #[arg(long)]
        max_price: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Cloud backends.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
    },
    /// Offline bundles: everything a site with no network needs, in one file.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Images kept by the coordinator, for nodes that reach no registry.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Fleets: named groups of nodes (`placement: cluster` for multi-node runs).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// The project's secrets, for `${{ secrets.NAME }}` in a run's `env` and `registry_auth`:
    /// stored encrypted, never shown again.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Named volumes (`type: volume`; `volumes: [name:/path]` in a run): they outlive runs.
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// The `ProxyCommand` of `ssh RUN` (written by `attach`): pipes SSH to the run's container.
    #[command(hide = true)]
    SshProxy {
        run: String,
        #[arg(long, default_value_t = 0)]
        job: u32,
        #[arg(long)]
        project: Option<String>,
        /// The public key to log in with (`.pub`).
        #[arg(long)]
        key: std::path::PathBuf,
    },
    /// Store the coordinator URL, token and project in the CLI's config file.
    Config {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        project: Option<String>,
        /// Trust the coordinator's own CA with this SHA-256 (it prints it at start): fetched from
        /// the URL once, kept only when the hash matches.
        #[arg(long, conflicts_with = "ca_file")]
        ca_hash: Option<String>,
        /// Trust the coordinator's own CA from this PEM file (its data dir's ca.pem).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
}

/// Which nodes: the ones named, a fleet's, or all.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["nodes", "fleet", "all"])))]
pub struct NodeSelection {
    /// Node names (or ids).
    pub nodes: Vec<String>,
    /// Every node of this fleet.
    #[arg(long)]
    pub fleet: Option<String>,
    /// Every node.
    #[arg(long)]
    pub all: bool,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// One node: its hardware, its jobs, and why its fleet refuses it when it does.
    Get {
        /// Its name (or id).
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Take no new jobs on the nodes (running ones go on).
    Cordon(NodeSelection),
    /// Take new jobs on the nodes again.
    Uncordon(NodeSelection),
    /// Cordon, wait for the node's jobs to end, and stop what still runs after `--deadline`.
    Drain {
        node: String,
        /// How long jobs may run on, e.g. `10m`, `1h`; without it, wait for them to end.
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Remove a node from the cluster: its certificate is revoked (its agent is refused from now
    /// on) and its jobs are interrupted.
    Remove {
        node: String,
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// A node's GPUs: return one taken out of service for a fault.
    Gpu {
        #[command(subcommand)]
        command: GpuCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum GpuCommand {
    /// Return a GPU to service (should its fault still show in the node's next report, it goes
    /// out again).
    Enable {
        node: String,
        /// Its index, as `corral node get NODE` shows it.
        index: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackendCommand {
    /// The configured backends, their regions, and whether they answer.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Write one file with the agent, coordinator and CLI, the install script and, with --image,
    /// images: `install.sh --bundle FILE` installs from it with no network.
    Create {
        /// The file to write.
        #[arg(short, long, default_value = "corral-bundle.tar.gz")]
        output: std::path::PathBuf,
        /// Where corral, corral-agent and corral-coordinator are [default: beside this program].
        #[arg(long)]
        bin_dir: Option<std::path::PathBuf>,
        /// An image from the local Docker to include (repeatable).
        #[arg(long = "image", value_name = "IMAGE")]
        images: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Store an image in the coordinator for the project's runs: from the local Docker (`docker
    /// save`), or a tarball it wrote. Nodes that lack it then load it from the coordinator; layers
    /// are stored once.
    Push {
        /// The image, e.g. `team/train:1.2`.
        #[arg(required_unless_present = "file")]
        image: Option<String>,
        /// A `docker save` tarball instead of the local Docker.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// For every project (global admins): e.g. the base image of a site with no registry.
        #[arg(long)]
        shared: bool,
    },
    /// The images the project's runs can use: its own and the shared ones.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Only the shared images.
        #[arg(long)]
        shared: bool,
    },
    /// Remove a stored image (nodes keep their copies).
    Rm {
        image: String,
        /// A shared image (global admins).
        #[arg(long)]
        shared: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Make a user; prints its token once.
    Create {
        name: String,
        /// `admin` (manages users, nodes, join tokens and images, and every project) or `user`
        /// (the rights its projects give it).
        #[arg(long, default_value = "user")]
        role: String,
    },
    /// Users, their global roles and projects.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a user: its token stops working, its memberships go.
    Delete { name: String },
    /// A new token for a user (yourself, or anyone for a global admin); the old one stops working.
    Token {
        name: String,
        /// Make the new token (tokens are kept hashed: one cannot be shown again).
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Make a project, with you as its admin.
    Create { name: String },
    /// Your projects and your role in each (a global admin sees all).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a project with its finished runs, logs, secrets, images and members (it must have no active
    /// run, fleet or volume).
    Delete {
        name: String,
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// A project's members and their roles.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Add a user to a project, or change its role: `user` (runs, stops, logs, attaches),
    /// `manager` (also members, fleets, volumes and secrets), `admin` (all of it).
    Add {
        project: String,
        user: String,
        #[arg(long, default_value = "user")]
        role: String,
    },
    Remove {
        project: String,
        user: String,
    },
    List {
        project: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct EventArgs {
    /// This project's events [default: the current project].
    #[arg(long)]
    pub project: Option<String>,
    /// Every project's and the cluster's (global admins).
    #[arg(long, conflicts_with = "project")]
    pub all: bool,
    /// Only the last this long, e.g. 1h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    /// Only what happened to this run (how its jobs ended, its retries) or this user, node, ...
    #[arg(long, value_name = "NAME")]
    pub object: Option<String>,
    /// As JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a join token for enrolling hosts (`corral-agent --token ...`), or with `--service RUN`
    /// a token that calls that service of the project and nothing else; prints it.
    Create {
        /// A token for calling this service (`auth: true`), not a join token.
        #[arg(long, value_name = "RUN", conflicts_with_all = ["fleet", "ttl", "uses"])]
        service: Option<String>,
        /// Hosts enrolled with it join this fleet.
        #[arg(long)]
        fleet: Option<String>,
        /// It stops working after this long, e.g. `1h`, `7d`.
        #[arg(long)]
        ttl: Option<String>,
        /// It enrolls at most this many hosts.
        #[arg(long)]
        uses: Option<u32>,
    },
    /// Join tokens (never their secrets): fleet, uses left, expiry, status; `--service`: the
    /// project's service tokens.
    List {
        #[arg(long)]
        service: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a join token from enrolling more hosts (the ID from `list`, or its first digits);
    /// `--service`: revoke a service token.
    Revoke {
        id: String,
        #[arg(long)]
        service: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a fleet's configuration (its nodes stay enrolled).
    Delete {
        name: String,
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a secret: VALUE, else the file of `--from-file`, else standard input (one line, or all
    /// of it when not a terminal).
    Set {
        name: String,
        value: Option<String>,
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        from_file: Option<std::path::PathBuf>,
    },
    /// The project's secrets: names and dates, never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a secret (runs that name it can no longer start).
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Volumes: name, project, node, size, status, and the runs that mount them.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume no run uses, with its data: its node removes the Docker volume (an EBS
    /// volume is deleted in the cloud).
    Delete {
        name: String,
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

fn parse_port(text: &str) -> Result<corral_proto::config::PortMapping, String> {
    corral_proto::config::parse_port_mapping(text)
        .ok_or_else(|| format!("{text:?} is not a port mapping: use LOCAL:CONTAINER, PORT or *:CONTAINER"))
}

/// Runs one command; returns the process exit code. Errors are returned for `main` to print.
pub async fn run(cli: Cli, out: &mut (dyn std::io::Write + Send)) -> anyhow::Result<i32> {
    use commands::*;
    match cli.command {
        Command::Validate { files } => validate(&files, out),
        Command::Config { url, token, project, ca_hash, ca_file } => {
            config(ConfigChange { url, token, project, ca_hash, ca_file }, out).await
        }
        Command::Apply { file, yes, detach, name } => {
            apply(&client::Client::from_env()?, &file, yes, detach, name, out).await
        }
        Command::Ps { run: Some(run), json, .. } => {
            commands::ps_run(&client::Client::from_env()?, &run, json, out).await
        }
        Command::Ps { run: None, all, json, limit } => ps(&client::Client::from_env()?, all, json, limit, out).await,
        Command::Logs { run, follow, job } => {
            logs(&client::Client::from_env()?, &run, job, follow, out).await.map(|_| 0)
        }
        Command::Metrics { run, watch, json } => {
            metrics::metrics(&client::Client::from_env()?, &run, watch, json, out).await
        }
        Command::Stop { run, yes, abort } => stop(&client::Client::from_env()?, &run, yes, abort, out).await,
        Command::Attach { run, ports, job } => {
            attach::attach(&client::Client::from_env()?, &run, job, ports, out).await
        }
        Command::Exec { run, job, interactive, tty, command } => {
            let client = client::Client::from_env()?;
            if tty {
                return exec::exec_tty(&client, &run, job, &command).await;
            }
            let stdin: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>> =
                if interactive { Some(Box::new(exec::detached_stdin())) } else { None };
            let mut err = std::io::stderr();
            exec::exec(&client, &run, job, &command, stdin, out, &mut err).await
        }
        Command::SshProxy { run, job, project, key } => {
            let mut client = client::Client::from_env()?;
            if let Some(p) = project {
                client.project = p;
            }
            ssh::proxy(&client, &run, job, &key).await
        }
        Command::Node { command } => cluster::node(&client::Client::from_env()?, command, out).await,
        Command::Fleet { command } => cluster::fleet(&client::Client::from_env()?, command, out).await,
        Command::Offer { gpu, cpu, memory, spot, max_price, json } => {
            offers::offer(&client::Client::from_env()?, gpu, cpu, memory, spot, max_price, json, out).await
        }
        Command::Backend { command: BackendCommand::List { json } } => {
            offers::backend_list(&client::Client::from_env()?, json, out).await
        }
        Command::Bundle { command: BundleCommand::Create { output, bin_dir, images } } => {
            bundle::create(&output, bin_dir, &images, out)
        }
        Command::Image { command } => images::image(&client::Client::from_env()?, command, out).await,
        Command::Secret { command } => secrets::secret(&client::Client::from_env()?, command, out).await,
        Command::Volume { command } => volumes::volume(&client::Client::from_env()?, command, out).await,
        Command::Token { command } => cluster::token(&client::Client::from_env()?, command, out).await,
        Command::Whoami { json } => teams::whoami(&client::Client::from_env()?, json, out).await,
        Command::User { command } => teams::user(&client::Client::from_env()?, command, out).await,
        Command::Project { command } => teams::project(&client::Client::from_env()?, command, out).await,
        Command::Event(args) => teams::events(&client::Client::from_env()?, args, out).await,
    }
}

/// The `corral` binary's `main`: parses the arguments, runs the command, prints an error.
pub async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match run(cli, &mut stdout).await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
