//! The shim's output plumbing: turning pipe reads into log records, and getting the shim's
//! own stdio out of the daemon's way.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use crate::logs::{Stream, write_record};

/// Longest line kept whole; longer output is logged in partial records of this size.
const MAX_LINE: usize = 16 * 1024;

/// Splits one stream's bytes into log records.
pub struct LineSplitter {
    stream: Stream,
    log: File,
    buf: Vec<u8>,
}

impl LineSplitter {
    /// A splitter writing `stream`'s records to `log`.
    pub fn new(stream: Stream, log: File) -> Self {
        LineSplitter {
            stream,
            log,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads what `fd` has and logs the complete lines. Returns false at end of file.
    pub fn pump(&mut self, fd: &OwnedFd) -> bool {
        let mut chunk = [0u8; 65536];
        let n = match nix::unistd::read(fd, &mut chunk) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(nix::Error::EINTR) | Err(nix::Error::EAGAIN) => return true,
            Err(_) => return false,
        };
        self.buf.extend_from_slice(&chunk[..n]);
        let now = time::OffsetDateTime::now_utc();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            self.write(now, false, start, end);
            start = end + 1;
        }
        while self.buf.len() - start >= MAX_LINE {
            self.write(now, true, start, start + MAX_LINE);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
        true
    }

    /// Logs whatever is left as a partial record.
    pub fn finish(&mut self) {
        if !self.buf.is_empty() {
            let len = self.buf.len();
            self.write(time::OffsetDateTime::now_utc(), true, 0, len);
            self.buf.clear();
        }
    }

    fn write(&mut self, now: time::OffsetDateTime, partial: bool, start: usize, end: usize) {
        // A full disk must not kill the container's supervisor; the line is lost.
        let _ = write_record(
            &mut self.log,
            now,
            self.stream,
            partial,
            &self.buf[start..end],
        );
    }
}

/// Sends the shim's stderr to a file, for its own diagnostics.
pub fn redirect_stderr(path: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        // SAFETY: dup2 onto fd 2 of this single-threaded process.
        unsafe { libc::dup2(f.as_raw_fd(), 2) };
    }
}

/// Points stdout at /dev/null once the start report is sent, so the daemon's read of it
/// ends.
pub fn silence_stdout() {
    let _ = std::io::stdout().flush();
    if let Ok(f) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 of this single-threaded process.
        unsafe { libc::dup2(f.as_raw_fd(), 1) };
    }
}
