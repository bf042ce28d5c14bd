//! An incremental, byte-preserving Server-Sent Events scanner and an encoder.
//!
//! The scanner never changes the bytes it is fed: a relay passes every chunk
//! on unchanged and lets the scanner *look* at it. It finds event boundaries
//! in arbitrarily split chunks (LF, CR and CRLF line ends, a CRLF split across
//! chunks, comments, multi-line `data`, `id`, `event`, `retry`, a leading BOM),
//! following the WHATWG event-stream parsing rules.
//!
//! Two modes:
//! - **boundary mode** ([`SseScanner::boundaries_only`]) keeps O(1) state and
//!   copies nothing; it counts events and knows when the stream sits between
//!   events, which is where a relay may insert a keep-alive comment;
//! - **collect mode** ([`SseScanner::collecting`]) also assembles each event's
//!   fields, bounded by a maximum event size, for inspection hooks.
//!
//! ```
//! use mcp_gateway_core::sse::SseScanner;
//!
//! let mut scanner = SseScanner::collecting(1 << 20);
//! let mut seen = Vec::new();
//! for chunk in [&b"id: 1\nda"[..], b"ta: {\"a\":1}\r", b"\n\r\n"] {
//!     scanner.feed(chunk, |item| seen.push(item.data_str().into_owned()));
//! }
//! assert_eq!(seen, ["{\"a\":1}"]);
//! assert!(scanner.at_event_boundary());
//! ```

use std::borrow::Cow;

/// A keep-alive comment: ignored by every conforming client.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One dispatched event, as seen by an inspection hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, if the event had one.
    pub event: Option<&'a [u8]>,
    /// The data lines joined by `\n` (empty in boundary mode).
    pub data: &'a [u8],
    /// The `id:` field of this event, if it had one.
    pub id: Option<&'a [u8]>,
    /// The `retry:` field of this event, if it had a valid one.
    pub retry: Option<u64>,
    /// Raw size of the event on the wire, line ends included.
    pub wire_len: usize,
    /// The event was larger than the scanner's limit: `data` is empty
    /// (collect mode only). The bytes were still relayed unchanged.
    pub oversized: bool,
}

impl SseEvent<'_> {
    /// The data as text (lossy for invalid UTF-8, which SSE decodes as U+FFFD).
    pub fn data_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.data)
    }
}

/// The incremental scanner. See the module docs.
#[derive(Debug, Clone)]
pub struct SseScanner {
    collect: bool,
    max_event: usize,
    started: bool,
    skip_lf: bool,
    // Current (partial) line.
    line: Vec<u8>,
    line_len: usize,
    line_len_was: usize,
    line_first: Option<u8>,
    // Current event.
    has_fields: bool,
    data_seen: bool,
    oversized: bool,
    event_wire: usize,
    data: Vec<u8>,
    event: Option<Vec<u8>>,
    id: Option<Vec<u8>>,
    retry: Option<u64>,
    // Stream-wide.
    last_event_id: Vec<u8>,
    events: u64,
}

impl SseScanner {
    /// A scanner that finds boundaries and counts events, copying nothing.
    pub fn boundaries_only() -> Self {
        Self::new(false, usize::MAX)
    }

    /// A scanner that assembles each event, up to `max_event_size` bytes on
    /// the wire; larger events are reported with `oversized: true`.
    pub fn collecting(max_event_size: usize) -> Self {
        Self::new(true, max_event_size)
    }

    fn new(collect: bool, max_event: usize) -> Self {
        SseScanner {
            collect,
            max_event,
            started: false,
            skip_lf: false,
            line: Vec::new(),
            line_len: 0,
            line_len_was: 0,
            line_first: None,
            has_fields: false,
            data_seen: false,
            oversized: false,
            event_wire: 0,
            data: Vec::new(),
            event: None,
            id: None,
            retry: None,
            last_event_id: Vec::new(),
            events: 0,
        }
    }

    /// Events dispatched so far.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// The last `id` seen on the stream (the value a client would send as
    /// `Last-Event-ID`), collect mode only.
    pub fn last_event_id(&self) -> &[u8] {
        &self.last_event_id
    }

    /// True when the stream is between events: at the start of a line, with
    /// no field of a pending event seen. Inserting a comment block here
    /// cannot change any event the client parses.
    pub fn at_event_boundary(&self) -> bool {
        self.line_len == 0 && !self.has_fields
    }

    /// Scans `chunk`, calling `on_event` for every event it completes.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&SseEvent<'_>)) {
        let mut i = 0;
        if !self.started && !chunk.is_empty() {
            self.started = true;
            if chunk.starts_with(b"\xEF\xBB\xBF") {
                i = 3;
                self.event_wire += 3;
            }
        }
        if self.skip_lf && i < chunk.len() {
            self.skip_lf = false;
            if chunk[i] == b'\n' {
                i += 1;
                self.event_wire += 1;
            }
        }
        while i < chunk.len() {
            let rest = &chunk[i..];
            // memchr's vectorised search: a `data` line is most of an
            // event, and a byte-at-a-time scan cost ~9 instructions a byte.
            match memchr::memchr2(b'\n', b'\r', rest) {
                None => {
                    self.push_partial(rest);
                    break;
                }
                Some(p) => {
                    let seg = &rest[..p];
                    let mut end = p + 1;
                    if rest[p] == b'\r' {
                        if p + 1 < rest.len() {
                            if rest[p + 1] == b'\n' {
                                end += 1;
                            }
                        } else {
                            self.skip_lf = true;
                        }
                    }
                    let partial = self.line_len;
                    if partial == 0 {
                        // Fast path: the whole line is inside this chunk.
                        self.line_len = seg.len();
                        self.line_first = seg.first().copied();
                        self.event_wire += end;
                        self.end_line(seg, &mut on_event);
                    } else {
                        self.push_partial(seg);
                        self.event_wire += end - seg.len();
                        let line = std::mem::take(&mut self.line);
                        self.end_line(&line, &mut on_event);
                        self.line = line;
                        self.line.clear();
                    }
                    i += end;
                }
            }
        }
    }

    /// How many bytes of a line boundary mode keeps: enough to recognise
    /// `data` and `data:` however the line was split.
    const PREFIX: usize = 5;

    fn push_partial(&mut self, seg: &[u8]) {
        self.line_len += seg.len();
        self.event_wire += seg.len();
        if self.line_first.is_none() {
            self.line_first = seg.first().copied();
        }
        if self.collect {
            if self.oversized {
                return;
            }
            if self.event_wire > self.max_event {
                self.mark_oversized();
            } else {
                self.line.extend_from_slice(seg);
            }
        } else {
            let room = Self::PREFIX.saturating_sub(self.line.len());
            self.line.extend_from_slice(&seg[..room.min(seg.len())]);
        }
    }

    fn mark_oversized(&mut self) {
        self.oversized = true;
        self.line = Vec::new();
        self.data = Vec::new();
    }

    fn end_line(&mut self, line: &[u8], on_event: &mut impl FnMut(&SseEvent<'_>)) {
        let empty = self.line_len == 0;
        let comment = self.line_first == Some(b':');
        self.line_len_was = self.line_len;
        self.line_len = 0;
        self.line_first = None;
        if empty {
            self.dispatch(on_event);
            return;
        }
        if comment {
            return;
        }
        self.has_fields = true;
        if !self.collect {
            // Boundary mode only needs to know that a data field was present;
            // `line` holds at most the first PREFIX bytes of the line. Checked
            // before the name/value split, which this mode never uses (the
            // search for ':' ran over the whole line, data included).
            if line.starts_with(b"data:") || (line == b"data" && self.line_len_was == 4) {
                self.data_seen = true;
            }
            return;
        }
        if !self.oversized && self.event_wire > self.max_event {
            self.mark_oversized();
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(c) => {
                let v = &line[c + 1..];
                (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if self.oversized {
            // The line may have been dropped before its name was seen; an
            // oversized event is almost always a big `data` line.
            if name == b"data" || line.is_empty() {
                self.data_seen = true;
            }
            return;
        }
        match name {
            b"data" => {
                self.data_seen = true;
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => self.event = Some(value.to_vec()),
            b"id" if !value.contains(&0) => {
                self.id = Some(value.to_vec());
                self.last_event_id = value.to_vec();
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut impl FnMut(&SseEvent<'_>)) {
        // Per the spec an event is dispatched only when it had a data field.
        if self.data_seen {
            if self.data.last() == Some(&b'\n') {
                self.data.pop();
            }
            self.events += 1;
            on_event(&SseEvent {
                event: self.event.as_deref(),
                data: &self.data,
                id: self.id.as_deref(),
                retry: self.retry,
                wire_len: self.event_wire,
                oversized: self.oversized,
            });
        }
        self.has_fields = false;
        self.data_seen = false;
        self.oversized = false;
        self.event_wire = 0;
        self.data.clear();
        self.event = None;
        self.id = None;
        self.retry = None;
    }
}

/// Appends one event in wire form; multi-line `data` becomes several
/// `data:` lines. `event` and `id` must not contain line breaks.
pub fn encode_event(out: &mut Vec<u8>, event: Option<&str>, id: Option<&str>, data: &str) {
    if let Some(e) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(e.as_bytes());
        out.push(b'\n');
    }
    if let Some(i) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(i.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

/// Appends a comment block (ignored by clients).
pub fn encode_comment(out: &mut Vec<u8>, text: &str) {
    for line in text.split('\n') {
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        event: Option<Vec<u8>>,
        data: Vec<u8>,
        id: Option<Vec<u8>>,
        retry: Option<u64>,
    }

    fn scan(chunks: &[&[u8]]) -> (Vec<Owned>, u64) {
        let mut s = SseScanner::collecting(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |e| {
                out.push(Owned {
                    event: e.event.map(<[u8]>::to_vec),
                    data: e.data.to_vec(),
                    id: e.id.map(<[u8]>::to_vec),
                    retry: e.retry,
                })
            });
        }
        (out, s.events_seen())
    }

    #[test]
    fn spec_examples() {
        let (ev, _) = scan(&[b"data: YHOO\ndata: +2\ndata: 10\n\n"]);
        assert_eq!(ev[0].data, b"YHOO\n+2\n10");
        let (ev, _) = scan(&[b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].id.as_deref(), Some(&b"1"[..]));
        assert_eq!(ev[1].data, b"second event");
        assert_eq!(ev[1].id.as_deref(), Some(&b""[..]));
        assert_eq!(ev[2].data, b" third event");
        let (ev, _) = scan(&[b"data\n\ndata\ndata\n\ndata:"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, b"");
        assert_eq!(ev[1].data, b"\n");
    }

    #[test]
    fn priming_event_with_empty_data_and_retry() {
        let (ev, n) = scan(&[b"id: 0/0\nretry: 3000\ndata: \n\nevent: message\ndata: {}\n\n"]);
        assert_eq!(n, 2);
        assert_eq!(ev[0].data, b"");
        assert_eq!(ev[0].retry, Some(3000));
        assert_eq!(ev[1].event.as_deref(), Some(&b"message"[..]));
    }

    #[test]
    fn crlf_split_across_chunks() {
        let (ev, _) = scan(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].data, b"a");
        assert_eq!(ev[1].data, b"b");
    }

    #[test]
    fn boundary_tracking() {
        let mut s = SseScanner::boundaries_only();
        assert!(s.at_event_boundary());
        s.feed(b"data: x", |_| {});
        assert!(!s.at_event_boundary());
        s.feed(b"\n", |_| {});
        assert!(!s.at_event_boundary(), "pending event fields");
        s.feed(b"\n: c\n", |_| {});
        assert!(s.at_event_boundary());
        assert_eq!(s.events_seen(), 1);
    }

    #[test]
    fn oversized_events_are_flagged_not_lost() {
        let mut s = SseScanner::collecting(16);
        let mut flags = Vec::new();
        s.feed(b"data: 0123456789abcdefghij\n\ndata: ok\n\n", |e| {
            flags.push((e.oversized, e.data.to_vec()))
        });
        assert_eq!(flags, vec![(true, vec![]), (false, b"ok".to_vec())]);
    }

    #[test]
    fn bom_is_skipped() {
        let (ev, _) = scan(&[b"\xEF\xBB\xBFdata: x\n\n"]);
        assert_eq!(ev[0].data, b"x");
    }

    #[test]
    fn encoder_round_trips() {
        let mut out = Vec::new();
        encode_event(&mut out, Some("message"), Some("7"), "line1\nline2");
        encode_comment(&mut out, "ka");
        let (ev, _) = scan(&[&out]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data, b"line1\nline2");
        assert_eq!(ev[0].id.as_deref(), Some(&b"7"[..]));
    }

    fn stream_strategy() -> impl Strategy<Value = (Vec<u8>, Vec<Owned>)> {
        let event = (
            proptest::option::of("[a-z]{1,8}"),
            proptest::option::of("[0-9a-z/]{0,6}"),
            proptest::collection::vec("[ -~é]{0,20}", 1..4),
            proptest::option::of(0u64..100_000),
            proptest::bool::ANY,
            0usize..3,
        );
        proptest::collection::vec(event, 0..8).prop_map(|events| {
            let mut wire = Vec::new();
            let mut expect = Vec::new();
            for (ev, id, data, retry, comment, eol) in events {
                let nl: &[u8] = [&b"\n"[..], b"\r", b"\r\n"][eol];
                if comment {
                    wire.extend_from_slice(b": note");
                    wire.extend_from_slice(nl);
                }
                if let Some(e) = &ev {
                    wire.extend_from_slice(b"event: ");
                    wire.extend_from_slice(e.as_bytes());
                    wire.extend_from_slice(nl);
                }
                if let Some(i) = &id {
                    wire.extend_from_slice(b"id:");
                    wire.extend_from_slice(i.as_bytes());
                    wire.extend_from_slice(nl);
                }
                if let Some(r) = retry {
                    wire.extend_from_slice(format!("retry: {r}").as_bytes());
                    wire.extend_from_slice(nl);
                }
                for d in &data {
                    wire.extend_from_slice(b"data: ");
                    wire.extend_from_slice(d.as_bytes());
                    wire.extend_from_slice(nl);
                }
                wire.extend_from_slice(nl);
                expect.push(Owned {
                    event: ev.map(String::into_bytes),
                    data: data.join("\n").into_bytes(),
                    id: id.map(String::into_bytes),
                    retry,
                });
            }
            (wire, expect)
        })
    }

    proptest! {
        /// Any split of any valid stream yields the same events, and the
        /// scanner leaves the bytes (which the relay forwards) untouched.
        #[test]
        fn any_split_same_events((wire, expect) in stream_strategy(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points { chunks.push(&wire[prev..p]); prev = p; }
            chunks.push(&wire[prev..]);
            let relayed: Vec<u8> = chunks.concat();
            prop_assert_eq!(&relayed, &wire);
            let (events, n) = scan(&chunks);
            prop_assert_eq!(&events, &expect);
            prop_assert_eq!(n as usize, expect.len());

            let mut b = SseScanner::boundaries_only();
            for c in &chunks { b.feed(c, |_| {}); }
            prop_assert_eq!(b.events_seen() as usize, expect.len());
            prop_assert!(b.at_event_boundary());
        }

        /// Arbitrary bytes in arbitrary chunks never panic either mode.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let cut = cut.min(bytes.len());
            let mut a = SseScanner::collecting(64);
            let mut b = SseScanner::boundaries_only();
            for s in [&mut a, &mut b] {
                s.feed(&bytes[..cut], |_| {});
                s.feed(&bytes[cut..], |_| {});
            }
        }
    }
}
