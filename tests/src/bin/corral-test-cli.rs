//! The `corral` CLI binary, built inside the tests crate so that end-to-end tests can hand its path
//! (`CARGO_BIN_EXE_corral-test-cli`) to programs that run it, as OpenSSH runs `corral ssh-proxy`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    corral_cli::main().await
}
