//! `rkubectl`: the kubectl-style CLI for rkube (see [`rkube_ctl::rkubectl`]).

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RKUBECTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match rkube_ctl::rkubectl::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version succeed; usage errors exit 1, as kubectl's do.
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let code = rkube_ctl::rkubectl::run(cli).await;
    std::process::exit(code);
}
