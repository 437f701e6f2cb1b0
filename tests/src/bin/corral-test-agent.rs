//! The agent binary, built inside the tests crate so that end-to-end tests can start it as a real
//! process (in a network namespace of their own) by `CARGO_BIN_EXE_corral-test-agent`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    corral_agent::cli::main(std::env::args_os()).await
}
