//! `corral-agent`: the host daemon. Containers keep running when it stops.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    corral_agent::cli::main(std::env::args_os()).await
}
