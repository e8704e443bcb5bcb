//! Reading a container's CRI log for `kubectl logs`: parses the lines the `shim run`
//! helper writes (see [`crate::shim::log`]), joins partial (`P`) pieces into whole
//! lines, and selects what [`LogOptions`] ask for — lines since a time, the last N
//! lines, a byte limit, with or without the timestamp prefix. The rotated files are
//! read oldest first, then the live one; [`LogStream`] then keeps following the live
//! file (across rotations) for `follow`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use k8s_openapi::chrono::{DateTime, SecondsFormat, Utc};

use crate::shim::log::{rotated_files, Stream};

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLine<'a> {
    pub time: DateTime<Utc>,
    pub stream: Stream,
    /// A piece of a longer line (`P`); the line goes on in the next piece of its stream.
    pub partial: bool,
    pub text: &'a [u8],
}

/// Parses `<RFC3339Nano> <stdout|stderr> <F|P> <text>` (without the newline); `None`
/// for a malformed line.
pub fn parse_line(line: &[u8]) -> Option<CriLine<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match fields.next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(CriLine {
        time,
        stream,
        partial,
        text: fields.next().unwrap_or_default(),
    })
}

/// A whole line of output, as the container wrote it (without its newline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When its first piece was logged.
    pub time: DateTime<Utc>,
    pub stream: Stream,
    pub text: Vec<u8>,
}

impl LogLine {
    /// The line as `kubectl logs` prints it: with `timestamps`, prefixed by its RFC 3339
    /// time with nanoseconds.
    pub fn render(&self, timestamps: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 32);
        if timestamps {
            out.extend_from_slice(
                self.time
                    .to_rfc3339_opts(SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(&self.text);
        out.push(b'\n');
        out
    }
}

/// Joins the partial pieces of each stream into whole lines.
#[derive(Debug, Default)]
pub struct Joiner {
    pending: [Option<LogLine>; 2],
}

impl Joiner {
    /// Takes one parsed line; returns a whole line once its last piece arrived.
    pub fn push(&mut self, line: &CriLine<'_>) -> Option<LogLine> {
        let slot = &mut self.pending[line.stream as usize];
        let mut whole = slot.take().unwrap_or_else(|| LogLine {
            time: line.time,
            stream: line.stream,
            text: Vec::new(),
        });
        whole.text.extend_from_slice(line.text);
        if line.partial {
            *slot = Some(whole);
            None
        } else {
            Some(whole)
        }
    }
}

/// What to return of a log (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines (of those since `since`).
    pub tail_lines: Option<usize>,
    /// Only lines logged at or after this time.
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    /// Stop after this many bytes (the last line is cut).
    pub limit_bytes: Option<usize>,
}

/// Reads a log: first what it holds ([`LogStream::read_existing`]), then, for follow,
/// what is added ([`LogStream::read_new`]).
#[derive(Debug)]
pub struct LogStream {
    live: PathBuf,
    options: LogOptions,
    /// The live file as opened, and its inode, to notice a rotation.
    file: Option<(File, u64)>,
    /// Bytes after the last newline read so far.
    carry: Vec<u8>,
    joiner: Joiner,
    sent: usize,
}

impl LogStream {
    /// A reader of the log whose live file is `live`.
    pub fn new(live: &Path, options: LogOptions) -> Self {
        LogStream {
            live: live.to_path_buf(),
            options,
            file: None,
            carry: Vec::new(),
            joiner: Joiner::default(),
            sent: 0,
        }
    }

    /// Whether the byte limit was reached: nothing more will be returned.
    pub fn exhausted(&self) -> bool {
        self.options
            .limit_bytes
            .is_some_and(|limit| self.sent >= limit)
    }

    /// Everything the rotated and live files hold now, selected as the options say.
    ///
    /// # Errors
    /// When a file cannot be read (a live file that does not exist yet is empty).
    pub fn read_existing(&mut self) -> std::io::Result<Vec<u8>> {
        let mut lines = Vec::new();
        for rotated in rotated_files(&self.live) {
            match std::fs::read(&rotated) {
                Ok(bytes) => self.take_lines(&bytes, &mut lines),
                // Rotated away between listing and reading: its lines are lost to us.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        let bytes = self.read_live()?;
        self.take_lines(&bytes, &mut lines);
        let selected = select(lines, &self.options);
        Ok(self.emit(selected))
    }

    /// What was logged since the last read (tail does not apply to it).
    ///
    /// # Errors
    /// When the live file cannot be read.
    pub fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        let bytes = self.read_live()?;
        let mut lines = Vec::new();
        self.take_lines(&bytes, &mut lines);
        let options = LogOptions {
            tail_lines: None,
            ..self.options.clone()
        };
        let selected = select(lines, &options);
        Ok(self.emit(selected))
    }

    /// New bytes of the live file; when it was rotated, the rest of the old file and
    /// then the new one from its start.
    fn read_live(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        if let Some((file, _)) = self.file.as_mut() {
            file.read_to_end(&mut bytes)?;
        }
        let current = match std::fs::metadata(&self.live) {
            Ok(meta) => Some(meta.ino()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        let reopen = match (&self.file, current) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some((_, inode)), Some(current)) => *inode != current,
        };
        if reopen {
            match File::open(&self.live) {
                Ok(mut file) => {
                    let inode = file.metadata()?.ino();
                    file.seek(SeekFrom::Start(0))?;
                    file.read_to_end(&mut bytes)?;
                    self.file = Some((file, inode));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(bytes)
    }

    /// Parses the whole lines of `bytes` (after what was carried over) into `lines`.
    fn take_lines(&mut self, bytes: &[u8], lines: &mut Vec<LogLine>) {
        self.carry.extend_from_slice(bytes);
        let Some(last_newline) = self.carry.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        let rest = self.carry.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.carry, rest);
        for raw in complete.split(|b| *b == b'\n') {
            if let Some(line) = parse_line(raw) {
                if let Some(whole) = self.joiner.push(&line) {
                    lines.push(whole);
                }
            }
        }
    }

    /// Renders `lines`, cut at the byte limit.
    fn emit(&mut self, lines: Vec<LogLine>) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines {
            if self.exhausted() {
                break;
            }
            let mut rendered = line.render(self.options.timestamps);
            if let Some(limit) = self.options.limit_bytes {
                rendered.truncate(limit - self.sent);
            }
            self.sent += rendered.len();
            out.extend_from_slice(&rendered);
        }
        out
    }
}

/// The lines `options` select: since a time, then the last N.
pub fn select(lines: Vec<LogLine>, options: &LogOptions) -> Vec<LogLine> {
    let since = options.since;
    let kept = lines
        .into_iter()
        .filter(|line| since.is_none_or(|since| line.time >= since));
    match options.tail_lines {
        None => kept.collect(),
        Some(n) => {
            let mut last: VecDeque<LogLine> = VecDeque::with_capacity(n.min(4096));
            for line in kept {
                if n == 0 {
                    break;
                }
                if last.len() == n {
                    last.pop_front();
                }
                last.push_back(line);
            }
            last.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::chrono::TimeZone;

    use super::*;
    use crate::shim::log::RotatingFile;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, second)
            .single()
            .expect("valid time")
    }

    fn line(second: u32, stream: &str, tag: &str, text: &str) -> String {
        format!(
            "{} {stream} {tag} {text}\n",
            at(second).to_rfc3339_opts(SecondsFormat::Nanos, true)
        )
    }

    #[test]
    fn parses_cri_lines() {
        let parsed = parse_line(b"2024-05-01T12:00:01.5Z stderr P half a li").expect("parse");
        assert_eq!(parsed.stream, Stream::Stderr);
        assert!(parsed.partial);
        assert_eq!(parsed.text, b"half a li");
        assert_eq!(parsed.time.timestamp_subsec_millis(), 500);
        let empty = parse_line(b"2024-05-01T12:00:01Z stdout F ").expect("parse");
        assert_eq!(empty.text, b"");
        assert!(parse_line(b"garbage").is_none());
        assert!(parse_line(b"2024-05-01T12:00:01Z stdin F x").is_none());
        assert!(parse_line(b"2024-05-01T12:00:01Z stdout X x").is_none());
    }

    #[test]
    fn partial_pieces_join_per_stream() {
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("0.log");
        let text = [
            line(1, "stdout", "P", "hel"),
            line(1, "stderr", "F", "oops"),
            line(2, "stdout", "F", "lo"),
        ]
        .concat();
        std::fs::write(&live, text).expect("write");
        let mut stream = LogStream::new(&live, LogOptions::default());
        let out = stream.read_existing().expect("read");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "oops\nhello\n");
    }

    #[test]
    fn tail_since_limit_and_timestamps() {
        let lines: Vec<LogLine> = (1..=5)
            .map(|s| LogLine {
                time: at(s),
                stream: Stream::Stdout,
                text: format!("line{s}").into_bytes(),
            })
            .collect();
        let texts = |lines: Vec<LogLine>| -> Vec<String> {
            lines
                .iter()
                .map(|l| String::from_utf8_lossy(&l.text).into_owned())
                .collect()
        };
        let tail = LogOptions {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(texts(select(lines.clone(), &tail)), ["line4", "line5"]);
        let since = LogOptions {
            since: Some(at(3)),
            ..Default::default()
        };
        assert_eq!(
            texts(select(lines.clone(), &since)),
            ["line3", "line4", "line5"]
        );
        let both = LogOptions {
            since: Some(at(2)),
            tail_lines: Some(10),
            ..Default::default()
        };
        assert_eq!(texts(select(lines.clone(), &both)).len(), 4);
        let none = LogOptions {
            tail_lines: Some(0),
            ..Default::default()
        };
        assert!(select(lines.clone(), &none).is_empty());
        assert_eq!(
            String::from_utf8(lines[0].render(true)).expect("utf-8"),
            "2024-05-01T12:00:01.000000000Z line1\n"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("0.log");
        let text: String = (1..=5).map(|s| line(s, "stdout", "F", "abcd")).collect();
        std::fs::write(&live, text).expect("write");
        let mut stream = LogStream::new(
            &live,
            LogOptions {
                limit_bytes: Some(7),
                ..Default::default()
            },
        );
        assert_eq!(stream.read_existing().expect("read"), b"abcd\nab");
        assert!(stream.exhausted());
    }

    #[test]
    fn reads_rotated_files_in_order_and_follows_across_a_rotation() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("temp dir");
        let live = dir.path().join("0.log");
        let one = line(1, "stdout", "F", "one");
        let mut file = RotatingFile::open(&live, one.len() as u64 * 2, 5).expect("open");
        for (s, text) in [(1, "one"), (2, "two"), (3, "six")] {
            file.write_all(line(s, "stdout", "F", text).as_bytes())
                .expect("write");
        }
        assert_eq!(rotated_files(&live).len(), 1);
        let mut stream = LogStream::new(&live, LogOptions::default());
        let out = stream.read_existing().expect("read");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "one\ntwo\nsix\n");
        assert!(stream.read_new().expect("read").is_empty());
        // The next two lines rotate the live file away: nothing is lost or repeated.
        for (s, text) in [(4, "ten"), (5, "max")] {
            file.write_all(line(s, "stdout", "F", text).as_bytes())
                .expect("write");
        }
        let out = stream.read_new().expect("read");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "ten\nmax\n");

        let mut tail = LogStream::new(
            &live,
            LogOptions {
                tail_lines: Some(3),
                ..Default::default()
            },
        );
        let out = tail.read_existing().expect("read");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "six\nten\nmax\n");
    }
}
