//! Writing a response: head, framing, frames batched into one write.

#[allow(unused_imports)]
use super::*;

/// How a batch of response frames left the body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The body ended (the message is complete after this batch).
    Complete,
    /// The body failed.
    Failed,
    /// More frames will come.
    NotYet,
}

/// Response data frames written together.
#[derive(Default)]
pub(crate) struct Batch {
    frames: [Option<Bytes>; Batch::MAX],
    len: usize,
}

impl Batch {
    /// At most this many frames per write (an event and the end of its
    /// stream are two).
    const MAX: usize = 4;

    pub(crate) fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.frames[self.len] = Some(data);
            self.len += 1;
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len == Self::MAX
    }

    /// The write: `head`, each frame (chunked if `chunked`), and the last
    /// chunk if `last`. Returns how many of `out` are used.
    fn slices<'a>(
        &'a self,
        head: &'a [u8],
        chunked: bool,
        last: bool,
        lines: &'a mut [[u8; 18]; Self::MAX],
        out: &mut [IoSlice<'a>; 2 + 3 * Self::MAX],
    ) -> usize {
        let mut n = 0;
        let mut put = |s: &'a [u8]| {
            if !s.is_empty() {
                out[n] = IoSlice::new(s);
                n += 1;
            }
        };
        put(head);
        for (data, line) in self.frames[..self.len]
            .iter()
            .flatten()
            .zip(lines.iter_mut())
        {
            if chunked {
                put(crate::framing::chunk_size_line_in(data.len(), line));
                put(data);
                put(b"\r\n");
            } else {
                put(data);
            }
        }
        if last {
            put(b"0\r\n\r\n");
        }
        n
    }
}

impl Conn {
    /// Writes the head (unless `head_sent`) and `batch`. Without waiting
    /// when the socket takes it all, the usual case; otherwise the rest is
    /// copied out and written as the socket drains. Either way the slices
    /// and the batch are gone before any wait, so they are not part of the
    /// response future, which every response moves (the arrays made it
    /// 2 KiB).
    pub(crate) async fn send(
        &mut self,
        batch: Batch,
        head_sent: bool,
        chunked: bool,
        last: bool,
    ) -> io::Result<()> {
        let rest = {
            let head: &[u8] = if head_sent { b"" } else { &self.wbuf };
            let mut lines = [[0u8; 18]; Batch::MAX];
            let mut slices = [IoSlice::new(b""); 2 + 3 * Batch::MAX];
            let n = batch.slices(head, chunked, last, &mut lines, &mut slices);
            let slices = &slices[..n];
            let total: usize = slices.iter().map(|s| s.len()).sum();
            let wrote = match self.io.try_write_vectored(slices) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            if wrote == total {
                return Ok(());
            }
            let mut rest = Vec::with_capacity(total - wrote);
            let mut skip = wrote;
            for s in slices {
                let take = s.len().saturating_sub(skip);
                rest.extend_from_slice(&s[s.len() - take..]);
                skip = skip.saturating_sub(s.len());
            }
            rest
        };
        self.io.write_all(&rest).await
    }
}

pub(crate) fn status_line(status: StatusCode, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `content-length: n`, and the end of the head.
pub(crate) fn content_length(n: u64, out: &mut Vec<u8>) {
    crate::framing::content_length_field(n, out);
    out.extend_from_slice(b"\r\n");
}

/// A `date` field, formatted once a second per thread.
pub(crate) fn date_field(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(c.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}
