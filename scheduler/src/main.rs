//! `rkube-scheduler`: not built yet (issue #3). Exits with an error rather than pretend to run.

fn main() -> std::process::ExitCode {
    eprintln!("rkube-scheduler: not implemented yet (issue #3)");
    std::process::ExitCode::FAILURE
}
