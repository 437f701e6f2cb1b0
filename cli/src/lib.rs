//! `corral`: the user's command line. Reads dstack-compatible configuration files and talks to the
//! coordinator's HTTP API only ([`client`]). Each verb lives in [`commands`].

pub mod client;
pub mod cluster;
pub mod commands;
pub mod output;

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
    /// List runs (active ones; `-a` for all).
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(long)]
        json: bool,
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
    /// Stop a run: SIGTERM, then SIGKILL after its grace period (`--abort`: kill at once).
    Stop {
        run: String,
        #[arg(short = 'y', long)]
        yes: bool,
        #[arg(long)]
        abort: bool,
    },
    /// Nodes enrolled with the coordinator.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Fleets: named groups of nodes (`placement: cluster` for multi-node runs).
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Store the coordinator URL, token and project in the CLI's config file.
    Config {
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Take no new jobs on the node (running ones go on).
    Cordon { node: String },
    /// Take new jobs on the node again.
    Uncordon { node: String },
    /// Cordon, wait for the node's jobs to end, and stop what still runs after `--deadline`.
    Drain {
        node: String,
        /// How long jobs may run on, e.g. `10m`, `1h`; without it, wait for them to end.
        #[arg(long)]
        deadline: Option<String>,
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

/// Runs one command; returns the process exit code. Errors are returned for `main` to print.
pub async fn run(cli: Cli, out: &mut (dyn std::io::Write + Send)) -> anyhow::Result<i32> {
    use commands::*;
    match cli.command {
        Command::Validate { files } => validate(&files, out),
        Command::Config { url, token, project } => config(url, token, project, out),
        Command::Apply { file, yes, detach, name } => {
            apply(&client::Client::from_env()?, &file, yes, detach, name, out).await
        }
        Command::Ps { all, json } => ps(&client::Client::from_env()?, all, json, out).await,
        Command::Logs { run, follow, job } => {
            logs(&client::Client::from_env()?, &run, job, follow, out).await.map(|_| 0)
        }
        Command::Stop { run, yes, abort } => stop(&client::Client::from_env()?, &run, yes, abort, out).await,
        Command::Node { command } => cluster::node(&client::Client::from_env()?, command, out).await,
        Command::Fleet { command } => cluster::fleet(&client::Client::from_env()?, command, out).await,
    }
}
