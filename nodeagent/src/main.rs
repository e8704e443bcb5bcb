//! `rkube-nodeagent`: not built yet (issue #5). Exits with an error rather than pretend to run.

fn main() -> std::process::ExitCode {
    eprintln!("rkube-nodeagent: not implemented yet (issue #5)");
    std::process::ExitCode::FAILURE
}
