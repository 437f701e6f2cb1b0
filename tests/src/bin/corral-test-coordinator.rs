//! The coordinator binary, built inside the tests crate so that end-to-end tests can run it as a
//! real process (in a container of their own) by `CARGO_BIN_EXE_corral-test-coordinator`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    corral_coordinator::cli::main(std::env::args_os()).await
}
