//! Container output in the Kubernetes CRI log format: one line per line of output,
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>`, where `P` marks a piece of a
//! line longer than [`MAX_LINE`] and `F` its last piece (or a whole line).

use std::io::Write;

use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};

/// The longest line piece written as one log line (kubelet's default is 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// Which output a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns the bytes of a container's two output streams into CRI log lines; each stream
/// keeps its unfinished line until its newline (or the end) arrives.
#[derive(Debug)]
pub struct CriLog<W: Write> {
    out: W,
    pending: [Vec<u8>; 2],
}

impl<W: Write> CriLog<W> {
    pub fn new(out: W) -> Self {
        CriLog {
            out,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// Logs `bytes` read from `stream` at `now`.
    ///
    /// # Errors
    /// When the log cannot be written.
    pub fn write(
        &mut self,
        stream: Stream,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> std::io::Result<()> {
        let index = stream as usize;
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|b| *b == b'\n') {
            self.pending[index].extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            self.flush_line(stream, now, true)?;
        }
        self.pending[index].extend_from_slice(rest);
        while self.pending[index].len() >= MAX_LINE {
            self.flush_line(stream, now, false)?;
        }
        Ok(())
    }

    /// Writes what is left of unfinished lines as full lines (the streams ended).
    ///
    /// # Errors
    /// When the log cannot be written.
    pub fn finish(&mut self, now: DateTime<Utc>) -> std::io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if !self.pending[stream as usize].is_empty() {
                self.flush_line(stream, now, true)?;
            }
        }
        self.out.flush()
    }

    /// Writes the pending line of `stream` (at most [`MAX_LINE`] bytes of it): as a full
    /// line when `full`, else as a partial one.
    fn flush_line(
        &mut self,
        stream: Stream,
        now: DateTime<Utc>,
        full: bool,
    ) -> std::io::Result<()> {
        let pending = &mut self.pending[stream as usize];
        let take = pending.len().min(MAX_LINE);
        let tag = if full && take == pending.len() {
            "F"
        } else {
            "P"
        };
        let mut line = format!(
            "{} {} {tag} ",
            now.to_rfc3339_opts(SecondsFormat::Nanos, true),
            stream.name()
        )
        .into_bytes();
        line.extend_from_slice(&pending[..take]);
        line.push(b'\n');
        pending.drain(..take);
        self.out.write_all(&line)?;
        if full && !pending.is_empty() {
            // A line longer than MAX_LINE: its last piece is the full one.
            return self.flush_line(stream, now, true);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::chrono::TimeZone;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn lines_are_split_on_newlines_per_stream() {
        let mut log = CriLog::new(Vec::new());
        log.write(Stream::Stdout, b"hello fr", at()).expect("write");
        log.write(Stream::Stderr, b"oops\n", at()).expect("write");
        log.write(Stream::Stdout, b"om rkube\nsecond\n\nlast", at())
            .expect("write");
        log.finish(at()).expect("finish");
        let text = String::from_utf8(log.out).expect("utf-8");
        let ts = "2024-05-01T12:00:00.000000000Z";
        assert_eq!(
            text,
            format!(
                "{ts} stderr F oops\n{ts} stdout F hello from rkube\n{ts} stdout F second\n\
                 {ts} stdout F \n{ts} stdout F last\n"
            )
        );
    }

    #[test]
    fn long_lines_become_partial_pieces() {
        let mut log = CriLog::new(Vec::new());
        let long = vec![b'x'; MAX_LINE + 10];
        log.write(Stream::Stdout, &long, at()).expect("write");
        log.write(Stream::Stdout, b"\n", at()).expect("write");
        log.finish(at()).expect("finish");
        let text = String::from_utf8(log.out).expect("utf-8");
        let tags: Vec<&str> = text
            .lines()
            .map(|l| l.split(' ').nth(2).expect("tag"))
            .collect();
        assert_eq!(tags, ["P", "F"]);
        let total: usize = text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).expect("text").len())
            .sum();
        assert_eq!(total, MAX_LINE + 10);
    }
}
