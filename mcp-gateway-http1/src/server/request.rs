//! Reading a request head (RFC 9112): framing, limits, refusals.

#[allow(unused_imports)]
use super::*;

/// A parsed request head.
pub(crate) struct RequestHead {
    pub(crate) parts: http::request::Parts,
    pub(crate) framing: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) expect_continue: bool,
}

/// How a request body is delimited.
#[derive(Debug)]
pub(crate) enum Framing {
    /// This many bytes (0: no body).
    Length(u64),
    Chunked(ChunkDecoder),
}

/// Why a request head is refused: the status, and what the client is told.
#[derive(Debug, PartialEq)]
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) &'static str);

fn bad(why: &'static str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why)
}

/// Reads a request head from the front of `buf`, consuming it. `Ok(None)`:
/// not complete yet.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Result<Option<RequestHead>, Refusal> {
    // Field positions are noted as offsets: the bytes are frozen after the
    // parse, and names, values and the target then point into them.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut spans = Spans::new();
    let mut req = httparse::Request::new(&mut []);
    let (len, method, target, minor) = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut fields)
    {
        Ok(httparse::Status::Complete(len)) => {
            let base = buf.as_ptr() as usize;
            spans.note(req.headers, buf.as_ptr());
            let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
                .map_err(|_| bad("invalid method"))?;
            let path = req.path.unwrap_or("");
            let target = (path.as_ptr() as usize - base, path.len());
            (len, method, target, req.version.unwrap_or(1))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(Refusal(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "HTTP version not supported",
            ))
        }
        Err(_) => return Err(bad("malformed request head")),
    };
    if len > MAX_HEAD {
        return Err(Refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    let head = buf.split_to(len).freeze();
    let uri = http::Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| bad("invalid request target"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Room for the fields the layers add (Host for the backend,
    // credentials): a full map rehashes every field to take one more.
    let mut headers = HeaderMap::with_capacity(spans.as_slice().len() + 4);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut close = version == Version::HTTP_10;
    let mut expect_continue = false;
    spans.for_each(&head, bad, |name, value| {
        if name == CONTENT_LENGTH {
            add_content_length(value.as_bytes(), &mut length).map_err(bad)?;
        } else if name == TRANSFER_ENCODING {
            // The last field's last coding counts: it must be chunked.
            chunked = Some(ends_chunked(value.as_bytes()));
        } else if name == CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                }
            }
        } else if name == EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
        Ok(())
    })?;
    let framing = match (chunked, length) {
        (Some(_), Some(_)) => return Err(bad("both Content-Length and Transfer-Encoding")),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (Some(false), None) => return Err(bad("Transfer-Encoding must end with chunked")),
        (Some(true), None) => Framing::Chunked(ChunkDecoder::default()),
        (None, n) => Framing::Length(n.unwrap_or(0)),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive: !close,
        expect_continue,
    }))
}
