//! `rkubectl`: the kubectl-style CLI for rkube (see [`rkube_ctl::rkubectl`]).
//!
//! `rkubectl shim …` (not listed in `--help`) is the node agent's container helper: the
//! `RUN` steps of `rkubectl image build` re-execute this binary as it, so it is answered
//! before anything else starts — no tokio runtime, no thread.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "shim") {
        return rkube_nodeagent::shim::main_from_args(args.into_iter().skip(1));
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli())
}

async fn cli() -> ExitCode {
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
