//! HTTP/1.1 as the gateway's upstream client speaks it: request heads
//! written, response heads and bodies read (RFC 9112).
//!
//! Why not hyper's client connection for `http://` backends: its
//! dispatcher (a request channel and a response callback, its own buffers,
//! header maps built twice) was the largest share of the gateway's work
//! per call. The client side is the easy side of HTTP/1.1 — the gateway writes the
//! requests itself and reads the answers of a backend it was configured
//! to trust — so the framing rules fit in this module and the connection
//! handling in [`client`](crate::client). The server side (untrusted clients) stays
//! with hyper.
//!
//! What a response may be, and how it is read:
//! - interim `1xx` responses are skipped (`101` is refused: the gateway
//!   never asks for an upgrade);
//! - no body for `HEAD`, `204` and `304`;
//! - `Transfer-Encoding` ending in `chunked`: chunks (extensions ignored,
//!   trailers kept); any other transfer coding, or neither header: the
//!   body runs to the end of the connection;
//! - `Content-Length` (repeated values must agree);
//! - a connection is reused only after an HTTP/1.1 response without
//!   `Connection: close` whose body had its own framing and nothing after
//!   it.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::SizeHint;

/// The largest response head (status line and fields) accepted, and the
/// largest trailer section.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most fields accepted in a response head or a trailer section.
const MAX_FIELDS: usize = 128;
/// The longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A response the backend sent that HTTP/1.1 does not allow, or one past
/// the gateway's bounds. The connection it came on is not reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProtocolError(&'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid HTTP/1.1 response from the upstream: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body and no framing field (`GET`, `DELETE`, … without a body).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked` (a streamed body of unknown length).
    Chunked,
}

impl RequestFraming {
    /// The framing for a body of this size: an empty body of a method that
    /// gives a body no meaning is sent without a framing field (RFC 9110
    /// §8.6), a known size as a length, anything else in chunks.
    pub(crate) fn of(method: &Method, size: &SizeHint) -> Self {
        match size.exact() {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
                RequestFraming::None
            }
            Some(n) => RequestFraming::Length(n),
            None => RequestFraming::Chunked,
        }
    }
}

/// Writes the request line and fields of `parts` into `out`. The framing
/// fields are the gateway's own (any `Content-Length` or
/// `Transfer-Encoding` in `parts` is left out), and `Host` is
/// `default_host` when `parts` has none.
pub(crate) fn encode_head(
    parts: &http::request::Parts,
    framing: RequestFraming,
    default_host: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(default_host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => content_length_field(n, out),
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// The `content-length: n` field of a head (requests and responses).
pub(crate) fn content_length_field(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the line that opens a chunk of `len` bytes (`len` > 0).
pub(crate) fn chunk_size_line(len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(chunk_size_line_in(len, &mut [0; 18]));
}

/// The line that opens a chunk of `len` bytes, written into `buf` (no
/// allocation, no formatter).
pub(crate) fn chunk_size_line_in(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[i..]
}

/// The last chunk and an empty trailer section.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a response's body is delimited.
#[derive(Debug)]
pub(crate) enum BodyFraming {
    /// `Content-Length`: this many bytes (left); `Length(0)` for a
    /// response without a body, or one read to its end.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(ChunkDecoder),
    /// Until the backend closes the connection.
    Close,
}

/// A response head, read.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: BodyFraming,
    /// Whether the connection may carry another request once the body is
    /// read.
    pub keep_alive: bool,
}

/// Where a head's fields lie in its buffer: (name offset, name length,
/// value offset, value length). httparse's fields borrow the buffer, which
/// is frozen only after the parse, so positions are noted in between. A
/// head's first [`Spans::INLINE`] fields are noted on the stack and only a
/// larger head takes a vector: an array for the most fields a head may
/// have was zeroed on every message (1.6 KiB for a request, 2 KiB for a
/// response), more work than noting a small head's fields.
pub(crate) struct Spans {
    inline: [(u32, u32, u32, u32); Spans::INLINE],
    more: Vec<(u32, u32, u32, u32)>,
    len: usize,
}

impl Spans {
    /// Fields noted on the stack.
    const INLINE: usize = 24;

    /// No fields noted yet.
    pub(crate) fn new() -> Spans {
        Spans {
            inline: [(0, 0, 0, 0); Spans::INLINE],
            more: Vec::new(),
            len: 0,
        }
    }

    /// Notes where each of `fields` lies in the buffer that starts at
    /// `base` (filled in place: a `Spans` is too large to move around).
    #[inline]
    pub(crate) fn note(&mut self, fields: &[httparse::Header<'_>], base: *const u8) {
        let base = base as usize;
        let span = |h: &httparse::Header<'_>| {
            (
                (h.name.as_ptr() as usize - base) as u32,
                h.name.len() as u32,
                (h.value.as_ptr() as usize - base) as u32,
                h.value.len() as u32,
            )
        };
        self.len = fields.len();
        if fields.len() <= Spans::INLINE {
            for (s, h) in self.inline.iter_mut().zip(fields) {
                *s = span(h);
            }
        } else {
            self.more = fields.iter().map(span).collect();
        }
    }

    /// The positions, in field order.
    pub(crate) fn as_slice(&self) -> &[(u32, u32, u32, u32)] {
        if self.len <= Spans::INLINE {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }

    /// Calls `f` with each field of `head` (the frozen buffer the
    /// positions point into), in order: its name, and its value sharing
    /// `head`'s bytes. Stops at the first invalid field or error of `f`.
    #[inline(always)]
    pub(crate) fn for_each<E>(
        &self,
        head: &Bytes,
        invalid: impl Fn(&'static str) -> E,
        mut f: impl FnMut(HeaderName, HeaderValue) -> Result<(), E>,
    ) -> Result<(), E> {
        for &(n, nl, v, vl) in self.as_slice() {
            let (n, nl, v, vl) = (n as usize, nl as usize, v as usize, vl as usize);
            let name = field_name(&head[n..n + nl]).map_err(|_| invalid("invalid field name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
                .map_err(|_| invalid("invalid field value"))?;
            f(name, value)?;
        }
        Ok(())
    }
}

/// A field name as a [`HeaderName`]. The MCP fields come from constants:
/// they are not standard HTTP names, and [`HeaderName::from_bytes`] copies
/// such a name into an allocation of its own every time it meets one.
/// Same result either way (names are compared without case and stored in
/// lower case).
pub(crate) fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use mcp_gateway_core::protocol::{header_names as mcp, headers};
    // The first byte (in lower case) and the length rule out almost every
    // other field before a comparison.
    let known = match (name.first().map(|b| b | 0x20), name.len()) {
        (Some(b'm'), 14) => Some((headers::MCP_SESSION_ID, mcp::MCP_SESSION_ID)),
        (Some(b'm'), 20) => Some((headers::MCP_PROTOCOL_VERSION, mcp::MCP_PROTOCOL_VERSION)),
        (Some(b'm'), 10) => Some((headers::MCP_METHOD, mcp::MCP_METHOD)),
        (Some(b'm'), 8) => Some((headers::MCP_NAME, mcp::MCP_NAME)),
        (Some(b'l'), 13) => Some((headers::LAST_EVENT_ID, mcp::LAST_EVENT_ID)),
        _ => None,
    };
    match known {
        Some((text, header)) if name.eq_ignore_ascii_case(text.as_bytes()) => Ok(header),
        _ => HeaderName::from_bytes(name),
    }
}

/// Reads a response head from the start of `buf`, consuming it (and any
/// interim `1xx` responses before it). `Ok(None)`: the head is not
/// complete yet. `method` is the request's (a `HEAD` response has no body).
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ProtocolError> {
    let mut spans = Spans::new();
    loop {
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut res = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut res,
            buf,
            &mut fields,
        );
        let (len, code, minor) = match parsed {
            Ok(httparse::Status::Complete(len)) => {
                // The values then point into the frozen head, no copy.
                spans.note(res.headers, buf.as_ptr());
                let code = res.code.unwrap_or(0);
                (len, code, res.version.unwrap_or(1))
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(ProtocolError("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ProtocolError("too many header fields"))
            }
            Err(_) => return Err(ProtocolError("malformed response head")),
        };
        if len > MAX_HEAD {
            return Err(ProtocolError("response head too large"));
        }
        match code {
            101 => return Err(ProtocolError("unexpected 101 Switching Protocols")),
            100..=199 => {
                // Interim (100 Continue, 103 Early Hints): the final
                // response follows.
                buf.advance(len);
                continue;
            }
            _ => {}
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| ProtocolError("invalid status code"))?;
        let head = buf.split_to(len).freeze();
        // Room for what the layers set (the session id, for one): a full
        // map rehashes every field to take one more.
        let mut headers = HeaderMap::with_capacity(spans.as_slice().len() + 4);
        spans.for_each(&head, ProtocolError, |name, value| {
            headers.append(name, value);
            Ok(())
        })?;
        let version = if minor == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let (framing, delimited) = body_framing(&headers, status, method)?;
        // HTTP/1.0 keep-alive is not worth its rules for a backend: close.
        let keep_alive = delimited && version == Version::HTTP_11 && !has_token(&headers, "close");
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
        }));
    }
}

/// The body framing (RFC 9112 §6.3), and whether the message delimits
/// itself (false when it ends with the connection, or when both framing
/// fields were sent, which a connection is not trusted after).
fn body_framing(
    headers: &HeaderMap,
    status: StatusCode,
    method: &Method,
) -> Result<(BodyFraming, bool), ProtocolError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyFraming::Length(0), true));
    }
    let mut codings = headers.get_all(TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        let chunked = codings.last().is_some_and(|v| ends_chunked(v.as_bytes()));
        let alone = !headers.contains_key(CONTENT_LENGTH);
        return Ok(if chunked {
            (BodyFraming::Chunked(ChunkDecoder::default()), alone)
        } else {
            (BodyFraming::Close, false)
        });
    }
    let mut length = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        add_content_length(v.as_bytes(), &mut length).map_err(ProtocolError)?;
    }
    Ok(match length {
        Some(n) => (BodyFraming::Length(n), true),
        None => (BodyFraming::Close, false),
    })
}

/// Whether a `Transfer-Encoding` field value ends with the chunked coding
/// (only the last coding frames the body).
pub(crate) fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Adds one `Content-Length` field value (a list, maybe) to the length
/// found so far: every value must be a decimal, and all must agree.
pub(crate) fn add_content_length(
    value: &[u8],
    length: &mut Option<u64>,
) -> Result<(), &'static str> {
    for part in value.split(|&b| b == b',') {
        let n = parse_decimal(part.trim_ascii()).ok_or("invalid Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length values");
        }
        *length = Some(n);
    }
    Ok(())
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether a `Connection` field lists `token`.
pub(crate) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    /// Body bytes (a chunk, or part of one).
    Data(Bytes),
    /// The trailer section, when it is not empty.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Where the chunked decoder is in the body.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body is complete.
    Done,
}

/// The chunked transfer coding (RFC 9112 §7.1), decoded incrementally:
/// any split of the input yields the same bytes.
#[derive(Debug, Default)]
pub(crate) struct ChunkDecoder {
    state: ChunkState,
}

impl ChunkDecoder {
    /// Decodes from the front of `buf`, consuming what it uses.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(ProtocolError("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(ProtocolError("chunk-size line too long"));
                    }
                    let size = parse_chunk_size(&buf[..nl])?;
                    buf.advance(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = left.min(buf.len() as u64);
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtocolError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => return self.trailers(buf),
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ProtocolError> {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
            self.state = ChunkState::Done;
            return Ok(Decoded::End);
        }
        let mut fields = [httparse::EMPTY_HEADER; 32];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut map = HeaderMap::with_capacity(fields.len());
                for f in fields.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| ProtocolError("invalid trailer name"))?;
                    let value = HeaderValue::from_bytes(f.value)
                        .map_err(|_| ProtocolError("invalid trailer value"))?;
                    map.append(name, value);
                }
                buf.advance(len);
                self.state = ChunkState::Done;
                Ok(Decoded::Trailers(map))
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                Err(ProtocolError("trailer section too large"))
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(_) => Err(ProtocolError("malformed trailer section")),
        }
    }
}

/// Parses `1a;ext=v\r` (the line without its LF): hexadecimal digits,
/// then optional whitespace and extensions, which are ignored.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ProtocolError> {
    let line = line
        .strip_suffix(b"\r")
        .ok_or(ProtocolError("chunk-size line not ended by CRLF"))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ProtocolError("missing chunk size"));
    }
    if digits > 15 {
        return Err(ProtocolError("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(ProtocolError("invalid chunk-size line"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16).unwrap_or(0);
        n * 16 + u64::from(d)
    }))
}

#[cfg(test)]
mod tests;
