//! Running a command under a pseudo-terminal (util-linux `script`), typing into it as
//! a person would: for `kubectl exec -it`.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Runs `command` under `script` on a 100x30 terminal; once its output shows
/// `wait_for`, types each of `inputs` followed by Enter, 300 ms apart. Killed after
/// `timeout` (the caller then sees a failed status). The terminal's output is in
/// `stdout`.
pub fn run_in_terminal(
    command: &Command,
    wait_for: &str,
    inputs: &[&str],
    timeout: Duration,
) -> Output {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = String::from("stty cols 100 rows 30; exec ");
    line.push_str(&quote(&command.get_program().to_string_lossy()));
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&quote(&arg.to_string_lossy()));
    }
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    for (key, value) in command.get_envs() {
        match value {
            Some(v) => script.env(key, v),
            None => script.env_remove(key),
        };
    }
    let mut child = script
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script (util-linux)");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (seen_tx, seen_rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let _ = seen_tx.send(all.clone());
        }
        all
    });
    let deadline = Instant::now() + timeout;
    while let Ok(screen) = seen_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if String::from_utf8_lossy(&screen).contains(wait_for) {
            break;
        }
    }
    for input in inputs {
        let _ = stdin.write_all(format!("{input}\r").as_bytes());
        let _ = stdin.flush();
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = wait_until(&mut child, deadline);
    drop(stdin);
    let stdout = reader.join().unwrap_or_default();
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for `child`, killing it at `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return child.wait().expect("wait for killed child");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
