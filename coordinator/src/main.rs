//! `corral-coordinator`: the coordinator daemon (see [`corral_coordinator::cli`]).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    corral_coordinator::cli::main(std::env::args_os()).await
}
