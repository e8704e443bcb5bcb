//! Container output in the Kubernetes CRI log format: one line per line of output,
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>`, where `P` marks a piece of a
//! line longer than [`MAX_LINE`] and `F` its last piece (or a whole line).
//!
//! [`RotatingFile`] rotates the log by size: the live file `<n>.log` is renamed to
//! `<n>.log.<seq>` (seq counting up) once the next line would take it over the limit,
//! and only the newest rotated files are kept; [`rotated_files`] lists them oldest
//! first, which is the order a reader reads them in, before the live file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Default size at which a container log is rotated (kubelet's `containerLogMaxSize`).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of files kept per container log, the live one included (kubelet's
/// `containerLogMaxFiles`).
pub const DEFAULT_MAX_FILES: usize = 5;

/// The rotated pieces of the log `live`, oldest first (not the live file itself).
pub fn rotated_files(live: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let seq = file_name.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((seq, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// An append-only log file that rotates itself by size. Every `write` is written whole
/// (no buffering), so a [`CriLog`] line never straddles two files and a reader that
/// follows the log sees each line as soon as it is logged.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: usize,
}

impl RotatingFile {
    /// Opens (appends to) the live log `path`; rotates past `max_size` bytes keeping
    /// `max_files` files in all (at least 1: then the old file is simply dropped).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path, max_size: u64, max_files: usize) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            max_size: max_size.max(1),
            max_files: max_files.max(1),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let rotated = rotated_files(&self.path);
        let next = rotated
            .last()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str()?.parse::<u64>().ok())
            .map_or(1, |seq| seq + 1);
        let mut target = self.path.clone().into_os_string();
        target.push(format!(".{next}"));
        std::fs::rename(&self.path, &target)?;
        let mut rotated = rotated;
        rotated.push(PathBuf::from(target));
        let keep = self.max_files - 1;
        let excess = rotated.len().saturating_sub(keep);
        for old in &rotated[..excess] {
            std::fs::remove_file(old)?;
        }
        self.file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
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

    #[test]
    fn rotation_keeps_the_newest_files_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("0.log");
        let mut file = RotatingFile::open(&live, 10, 3).expect("open");
        for line in ["aaaaaa\n", "bbbbbb\n", "cccccc\n", "dddddd\n", "eeeeee\n"] {
            file.write_all(line.as_bytes()).expect("write");
        }
        let rotated = rotated_files(&live);
        let names: Vec<String> = rotated
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.log.3", "0.log.4"]);
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        assert_eq!(read(&rotated[0]), "cccccc\n");
        assert_eq!(read(&rotated[1]), "dddddd\n");
        assert_eq!(read(&live), "eeeeee\n");
        // Reopening continues the sequence and the size.
        drop(file);
        let mut file = RotatingFile::open(&live, 10, 3).expect("reopen");
        file.write_all(b"ffffff\n").expect("write");
        let names: Vec<String> = rotated_files(&live)
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["0.log.4", "0.log.5"]);
        assert_eq!(read(&live), "ffffff\n");
    }
}
