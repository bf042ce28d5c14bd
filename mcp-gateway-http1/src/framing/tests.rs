//! Tests of `framing`.

use super::*;

#[test]
fn chunk_size_lines() {
    let mut buf = [0u8; 18];
    for (n, line) in [
        (1, "1"),
        (15, "f"),
        (16, "10"),
        (8192, "2000"),
        (usize::MAX, "ffffffffffffffff"),
    ] {
        assert_eq!(
            chunk_size_line_in(n, &mut buf),
            format!("{line}\r\n").as_bytes()
        );
    }
}
use proptest::prelude::*;

#[test]
fn mcp_field_names_from_constants_are_what_from_bytes_gives() {
    for name in [
        "mcp-session-id",
        "Mcp-Session-Id",
        "MCP-PROTOCOL-VERSION",
        "mcp-method",
        "Mcp-Name",
        "Last-Event-ID",
        "content-type",
        "x-custom",
        "mcp-sessionid",
        "mcp-session-i\u{1}",
        "bad name",
        "",
    ] {
        let ours = field_name(name.as_bytes());
        let theirs = HeaderName::from_bytes(name.as_bytes());
        assert_eq!(ours.is_ok(), theirs.is_ok(), "{name:?}");
        if let (Ok(a), Ok(b)) = (ours, theirs) {
            assert_eq!(a, b, "{name:?}");
            assert_eq!(a.as_str(), b.as_str(), "{name:?}");
        }
    }
}

#[test]
fn a_head_with_more_fields_than_the_stack_notes_keeps_them_all_in_order() {
    for n in [Spans::INLINE - 1, Spans::INLINE, Spans::INLINE + 1, 60] {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..n {
            text.push_str(&format!("x-f{i}: v{i}\r\nx-r: {i}\r\n"));
        }
        text.push_str("Mcp-Session-Id: s1\r\ncontent-length: 0\r\n\r\n");
        let h = head(&text).unwrap().unwrap();
        assert_eq!(h.headers.len(), 2 * n + 2, "{n} fields");
        for i in 0..n {
            assert_eq!(h.headers[format!("x-f{i}").as_str()], format!("v{i}"));
        }
        let repeated: Vec<String> = h
            .headers
            .get_all("x-r")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        assert_eq!(repeated, expected);
        assert_eq!(h.headers["mcp-session-id"], "s1");
    }
}

fn head(bytes: &str) -> Result<Option<ResponseHead>, ProtocolError> {
    parse_head(&mut BytesMut::from(bytes), &Method::POST)
}

fn framing(bytes: &str) -> (String, bool) {
    let h = head(bytes).unwrap().unwrap();
    (format!("{:?}", h.framing), h.keep_alive)
}

#[test]
fn request_head_has_our_framing_and_a_host() {
    let (parts, ()) = http::Request::post("/mcp?x=1")
        .header("content-length", "999")
        .header("transfer-encoding", "gzip")
        .header("mcp-session-id", "abc")
        .body(())
        .unwrap()
        .into_parts();
    let mut out = Vec::new();
    encode_head(&parts, RequestFraming::Length(2), "b:80", &mut out);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        "POST /mcp?x=1 HTTP/1.1\r\nhost: b:80\r\nmcp-session-id: abc\r\ncontent-length: 2\r\n\r\n"
    );
    let (parts, ()) = http::Request::get("http://a/s")
        .header("host", "a")
        .body(())
        .unwrap()
        .into_parts();
    out.clear();
    encode_head(&parts, RequestFraming::Chunked, "b:80", &mut out);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        "GET /s HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[test]
fn request_framing_follows_method_and_size() {
    let exact = |n| SizeHint::with_exact(n);
    assert_eq!(
        RequestFraming::of(&Method::GET, &exact(0)),
        RequestFraming::None
    );
    assert_eq!(
        RequestFraming::of(&Method::DELETE, &exact(0)),
        RequestFraming::None
    );
    assert_eq!(
        RequestFraming::of(&Method::POST, &exact(0)),
        RequestFraming::Length(0)
    );
    assert_eq!(
        RequestFraming::of(&Method::POST, &exact(7)),
        RequestFraming::Length(7)
    );
    assert_eq!(
        RequestFraming::of(&Method::POST, &SizeHint::new()),
        RequestFraming::Chunked
    );
    let mut line = Vec::new();
    chunk_size_line(255, &mut line);
    assert_eq!(line, b"ff\r\n");
}

#[test]
fn response_head_is_read_with_fields_in_order() {
    let mut buf = BytesMut::from(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-A: 1\r\nx-a: 2\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello",
    );
    let h = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.version, Version::HTTP_11);
    assert_eq!(h.headers["content-type"], "text/event-stream");
    let xa: Vec<_> = h.headers.get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"]);
    assert!(matches!(h.framing, BodyFraming::Chunked(_)));
    assert!(h.keep_alive);
    // The body's bytes stay in the buffer.
    assert_eq!(&buf[..], b"5\r\nhello");
}

#[test]
fn incomplete_head_waits_and_oversized_head_fails() {
    assert!(head("HTTP/1.1 200 OK\r\ncontent-len").unwrap().is_none());
    let big = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
    assert_eq!(
        head(&big).unwrap_err(),
        ProtocolError("response head too large")
    );
    let many: String = (0..=MAX_FIELDS).map(|i| format!("x{i}: 1\r\n")).collect();
    assert_eq!(
        head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err(),
        ProtocolError("too many header fields")
    );
    assert_eq!(
        head("HTTP/1.1 2000 OK\r\n\r\n").unwrap_err(),
        ProtocolError("malformed response head")
    );
    assert_eq!(
        head("SSH-2.0-OpenSSH\r\n\r\n").unwrap_err(),
        ProtocolError("malformed response head")
    );
}

#[test]
fn interim_responses_are_skipped_and_upgrades_refused() {
    let mut buf = BytesMut::from(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
         HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n",
    );
    let h = parse_head(&mut buf, &Method::POST).unwrap().unwrap();
    assert_eq!(h.status, StatusCode::ACCEPTED);
    assert!(!h.headers.contains_key("link"));
    assert!(buf.is_empty());
    assert_eq!(
        head("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n").unwrap_err(),
        ProtocolError("unexpected 101 Switching Protocols")
    );
    // An interim response alone: wait for the final one.
    let mut buf = BytesMut::from("HTTP/1.1 100 Continue\r\n\r\n");
    assert!(parse_head(&mut buf, &Method::POST).unwrap().is_none());
}

#[test]
fn body_framing_follows_rfc_9112() {
    for (response, expected, keep_alive) in [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            "Length(12)",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n",
            "Length(3)",
            true,
        ),
        (
            "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n",
            "Length(0)",
            true,
        ),
        ("HTTP/1.1 304 Not Modified\r\n\r\n", "Length(0)", true),
        // Neither field: until the connection closes, never reused.
        ("HTTP/1.1 200 OK\r\n\r\n", "Close", false),
        // A transfer coding that does not end in chunked: until close.
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "Close",
            false,
        ),
        // Connection: close, and HTTP/1.0.
        (
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
            "Length(0)",
            false,
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            "Length(0)",
            false,
        ),
    ] {
        assert_eq!(
            framing(response),
            (expected.into(), keep_alive),
            "{response}"
        );
    }
    // Both fields: chunked wins, and the connection is not trusted after.
    let (f, keep) =
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\ncontent-length: 3\r\n\r\n");
    assert!(f.starts_with("Chunked"), "{f}");
    assert!(!keep);
    // A HEAD response announces a length it does not send.
    let h = parse_head(
        &mut BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"),
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert!(matches!(h.framing, BodyFraming::Length(0)));
    for bad in [
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1e3\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
    ] {
        assert!(head(bad).is_err(), "{bad}");
    }
}

/// Decodes all of `input`, fed in pieces cut at `cuts`.
fn decode_split(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<HeaderMap>), ProtocolError> {
    let mut dec = ChunkDecoder::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut trailers = Vec::new();
    let mut fed = 0;
    let mut cuts = cuts.to_vec();
    cuts.push(input.len());
    for cut in cuts {
        let cut = cut.clamp(fed, input.len());
        buf.extend_from_slice(&input[fed..cut]);
        fed = cut;
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::Trailers(t) => trailers.push(t),
                Decoded::End => return Ok((out, trailers)),
                Decoded::NeedMore => break,
            }
        }
    }
    Err(ProtocolError("incomplete"))
}

#[test]
fn chunks_are_decoded_with_extensions_and_trailers() {
    let (data, trailers) = decode_split(
        b"5\r\nhello\r\n6;name=val\r\n world\r\nA  ;x\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n",
        &[],
    )
    .unwrap();
    assert_eq!(data, b"hello world0123456789");
    assert_eq!(trailers.len(), 1);
    assert_eq!(trailers[0]["x-sum"], "1");
    let (data, trailers) = decode_split(b"3\r\nabc\r\n0\r\n\r\n", &[]).unwrap();
    assert_eq!(data, b"abc");
    assert!(trailers.is_empty());
}

#[test]
fn malformed_chunks_are_errors() {
    for bad in [
        &b"zz\r\nab\r\n"[..],
        b"3\r\nabcX\r\n",
        b"3\nabc\r\n",
        b"3 x\r\nabc\r\n",
        b"1000000000000000\r\n",
        b"0\r\nbad trailer\r\n\r\n",
    ] {
        assert!(
            decode_split(bad, &[]).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
    assert_eq!(
        decode_split(long.as_bytes(), &[]).unwrap_err(),
        ProtocolError("chunk-size line too long")
    );
}

/// A chunked encoding of `chunks`, with an extension on every other
/// size line and the given trailer.
fn encode(chunks: &[Vec<u8>], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
        chunk_size_line(c.len(), &mut out);
        if i % 2 == 1 {
            out.truncate(out.len() - 2);
            out.extend_from_slice(b";e=1\r\n");
        }
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if trailer {
        b"0\r\nx-t: v\r\n\r\n"
    } else {
        LAST_CHUNK
    });
    out
}

proptest! {
    #[test]
    fn any_split_of_a_chunked_body_decodes_the_same(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
        trailer in any::<bool>(),
        cuts in proptest::collection::vec(0usize..2500, 0..12),
    ) {
        let input = encode(&chunks, trailer);
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (data, trailers) = decode_split(&input, &cuts).unwrap();
        prop_assert_eq!(data, chunks.concat());
        prop_assert_eq!(trailers.len(), usize::from(trailer));
    }
}
