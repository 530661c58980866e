//! Bridges a client-streamed upload to the image store's blocking readers: the async side
//! forwards chunks into a channel; the blocking side reads them as a `std::io::Read`.

use tokio::sync::mpsc;

/// A `Read` over chunks arriving on a channel. Ends when the sender is dropped.
pub struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    current: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    /// A reader and the sender that feeds it.
    pub fn new() -> (mpsc::Sender<Result<Vec<u8>, String>>, Self) {
        let (tx, rx) = mpsc::channel(16);
        (
            tx,
            ChannelReader {
                rx,
                current: Vec::new(),
                pos: 0,
            },
        )
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_chunks_in_order_then_ends() {
        let (tx, mut reader) = ChannelReader::new();
        std::thread::spawn(move || {
            for chunk in [b"hel".to_vec(), Vec::new(), b"lo".to_vec()] {
                tx.blocking_send(Ok(chunk)).unwrap();
            }
        });
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn a_failed_upload_is_an_error() {
        let (tx, mut reader) = ChannelReader::new();
        std::thread::spawn(move || {
            tx.blocking_send(Err("client went away".into())).unwrap();
        });
        let mut v = Vec::new();
        assert!(reader.read_to_end(&mut v).is_err());
    }
}
