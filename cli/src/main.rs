#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    corral_cli::main().await
}
