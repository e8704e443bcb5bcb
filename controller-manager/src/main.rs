//! `rkube-controller-manager`: not built yet (issue #4). Exits with an error rather than pretend to run.

fn main() -> std::process::ExitCode {
    eprintln!("rkube-controller-manager: not implemented yet (issue #4)");
    std::process::ExitCode::FAILURE
}
