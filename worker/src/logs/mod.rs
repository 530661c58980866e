//! Container log files. The shim writes one line per chunk of output in the CRI log format,
//! `<RFC 3339 time with nanoseconds> <stdout|stderr> <F|P> <bytes>`, where `P` marks a
//! partial line (no newline yet, or longer than the shim's buffer). The daemon reads the
//! same files for `logs`, `logs -f` and foreground `run`, so they stay readable while the
//! daemon restarts.

use std::io::{self, BufRead, Write};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the shim read the bytes, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: i64,
    /// The stream the bytes came from.
    pub stream: Stream,
    /// True when the bytes end without a newline.
    pub partial: bool,
    /// The bytes, without their newline.
    pub line: Vec<u8>,
}

/// Errors reading a log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The file could not be read.
    #[error("reading log file: {0}")]
    Io(#[from] io::Error),
}

/// Writes the record for `line` (without its newline) to `out`.
pub fn write_record(
    out: &mut impl Write,
    time: OffsetDateTime,
    stream: Stream,
    partial: bool,
    line: &[u8],
) -> io::Result<()> {
    // Formatting a UTC time with RFC 3339 cannot fail for years 0..=9999.
    let stamp = time
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let mut buf = Vec::with_capacity(stamp.len() + line.len() + 12);
    buf.extend_from_slice(stamp.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(stream.as_str().as_bytes());
    buf.extend_from_slice(if partial { b" P " } else { b" F " });
    buf.extend_from_slice(line);
    buf.push(b'\n');
    out.write_all(&buf)
}

/// Parses one line of a log file (with or without its trailing newline).
pub fn parse_record(raw: &[u8]) -> Option<Record> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let mut parts = raw.splitn(4, |b| *b == b' ');
    let stamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match parts.next()? {
        b"F" => false,
        b"P" => true,
        _ => return None,
    };
    let line = parts.next().unwrap_or_default().to_vec();
    let time = OffsetDateTime::parse(stamp, &Rfc3339).ok()?;
    let nanos = i64::try_from(time.unix_timestamp_nanos()).ok()?;
    Some(Record {
        time_unix_nanos: nanos,
        stream,
        partial,
        line,
    })
}

/// A reader that returns whole records from a log file and remembers where it stopped, so
/// that a follower can call it again when the file grows.
pub struct LogReader<R> {
    inner: io::BufReader<R>,
    pending: Vec<u8>,
}

impl<R: io::Read> LogReader<R> {
    /// Wraps a log file opened for reading.
    pub fn new(inner: R) -> Self {
        LogReader {
            inner: io::BufReader::new(inner),
            pending: Vec::new(),
        }
    }

    /// Returns the next complete record, or `None` at the current end of the file. A record
    /// still being written (no newline yet) is held back until it is complete.
    pub fn next_record(&mut self) -> Result<Option<Record>, LogError> {
        loop {
            let n = self.inner.read_until(b'\n', &mut self.pending)?;
            if n == 0 || !self.pending.ends_with(b"\n") {
                return Ok(None);
            }
            let raw = std::mem::take(&mut self.pending);
            if let Some(record) = parse_record(&raw) {
                return Ok(Some(record));
            }
            // A malformed line (a torn write after a crash) is skipped, not fatal.
        }
    }
}

/// Reads every record of a log file, keeping the last `tail` (all when `None`) whose time is
/// at or after `since_unix_nanos`.
pub fn read_tail(
    file: impl io::Read,
    tail: Option<usize>,
    since_unix_nanos: i64,
) -> Result<Vec<Record>, LogError> {
    let mut reader = LogReader::new(file);
    let mut out = std::collections::VecDeque::new();
    while let Some(r) = reader.next_record()? {
        if r.time_unix_nanos < since_unix_nanos {
            continue;
        }
        out.push_back(r);
        if let Some(t) = tail
            && out.len() > t
        {
            out.pop_front();
        }
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("valid time")
    }

    #[test]
    fn round_trips_full_and_partial_lines() {
        let mut buf = Vec::new();
        write_record(&mut buf, at(10), Stream::Stdout, false, b"hello world").unwrap();
        write_record(&mut buf, at(11), Stream::Stderr, true, b"no newline").unwrap();
        write_record(&mut buf, at(12), Stream::Stdout, false, b"").unwrap();
        let records = read_tail(&buf[..], None, 0).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].line, b"hello world");
        assert_eq!(records[0].stream, Stream::Stdout);
        assert!(!records[0].partial);
        assert_eq!(records[1].stream, Stream::Stderr);
        assert!(records[1].partial);
        assert_eq!(records[2].line, b"");
        assert_eq!(records[2].time_unix_nanos, 12_000_000_000);
    }

    #[test]
    fn tail_and_since_select_the_last_records() {
        let mut buf = Vec::new();
        for i in 0..10 {
            write_record(
                &mut buf,
                at(i),
                Stream::Stdout,
                false,
                format!("{i}").as_bytes(),
            )
            .unwrap();
        }
        let last3: Vec<_> = read_tail(&buf[..], Some(3), 0)
            .unwrap()
            .into_iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(last3, vec![b"7".to_vec(), b"8".to_vec(), b"9".to_vec()]);
        let since = read_tail(&buf[..], None, 8_000_000_000).unwrap();
        assert_eq!(since.len(), 2);
        assert!(read_tail(&buf[..], Some(0), 0).unwrap().is_empty());
    }

    #[test]
    fn reader_holds_back_an_unfinished_record() {
        let mut full = Vec::new();
        write_record(&mut full, at(1), Stream::Stdout, false, b"abc").unwrap();
        let cut = full.len() - 2;
        let mut reader = LogReader::new(io::Cursor::new(full[..cut].to_vec()));
        assert!(reader.next_record().unwrap().is_none());
        // Appending the rest completes the record.
        let mut rest = LogReader {
            inner: io::BufReader::new(io::Cursor::new(full[cut..].to_vec())),
            pending: reader.pending,
        };
        assert_eq!(rest.next_record().unwrap().unwrap().line, b"abc");
    }

    #[test]
    fn lines_with_spaces_keep_them() {
        let mut buf = Vec::new();
        write_record(&mut buf, at(1), Stream::Stdout, false, b"  a  b ").unwrap();
        assert_eq!(read_tail(&buf[..], None, 0).unwrap()[0].line, b"  a  b ");
    }
}
