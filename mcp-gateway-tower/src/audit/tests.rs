//! Tests of the audit layer and sinks.

use super::*;

#[tokio::test]
async fn a_call_is_recorded_as_its_answer_ends_not_when_the_body_is_dropped() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (sink, mut rx) = ChannelSink::new(8, Overflow::Drop);
    let svc = tower::ServiceBuilder::new()
        .layer(AuditLayer::new(Arc::new(sink), AuditConfig::default()))
        .layer(crate::jsonrpc::JsonRpcLayer::default())
        .service(crate::test_support::two_frame_event_stream());
    let req = crate::test_support::tools_call(7);
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    assert!(rx.try_recv().is_err(), "no record before the end");
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    // The body is still alive (a server drops it after writing the end).
    let e = rx.try_recv().expect("recorded when the end was seen");
    assert_eq!((e.outcome.as_ref(), e.id.as_deref()), ("ok", Some("7")));
    let sent: usize = crate::test_support::TWO_FRAMES
        .iter()
        .map(|f| f.len())
        .sum();
    assert_eq!(e.bytes_out, sent as u64);
    drop(body);
    assert!(rx.try_recv().is_err(), "recorded once");
}

#[test]
fn escape_check_finds_every_special_byte_anywhere() {
    let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    for len in 0..20 {
        for pos in 0..len {
            for b in 0..=255u8 {
                let mut s = vec![b'a'; len];
                s[pos] = b;
                assert_eq!(needs_escape(&s), naive(&s), "byte {b:#x} at {pos} of {len}");
            }
        }
    }
    assert!(!needs_escape("résumé ✓ 2026-11-24T03:40:00Z".as_bytes()));
}

#[test]
fn the_cached_clock_agrees_with_the_formatter() {
    let a = rfc3339(SystemTime::now());
    let b = now_rfc3339();
    let c = rfc3339(SystemTime::now());
    assert_eq!(b.len(), 24);
    assert!(a <= b && b <= c, "{a} {b} {c}");
}

#[test]
fn rfc3339_dates() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_473_361_123)),
        "2026-11-23T22:36:01.123Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
}

#[test]
fn hand_written_lines_are_what_serde_writes() {
    let plain = AuditEvent {
        event: EventKind::Call,
        time: now_rfc3339(),
        outcome: Outcome::Ok,
        ..Default::default()
    };
    let full = AuditEvent {
        event: EventKind::SessionEnd,
        time: "2026-11-24T01:02:03.456Z".into(),
        principal: Some("ann \"the\" agent\\".into()),
        tenant: Some("acme\u{1}\n".into()),
        auth_method: Some("jwt".into()),
        session: Some("s-Zx9".into()),
        backend: Some("wetter".into()),
        method: Some("tools/call".into()),
        target: Some("get_weather ☀".into()),
        id: Some("\"abc\"".into()),
        outcome: Outcome::Limited,
        error_code: Some(-32055),
        limit: Some("cost_budget".into()),
        client: Some("192.0.2.7".into()),
        detail: Some("upstream 10.0.0.5:3000 failed: connection refused".into()),
        http_status: Some(200),
        ttfb_us: Some(17),
        duration_us: Some(u64::MAX),
        bytes_in: 12,
        bytes_out: 0,
        progress: 3,
        cost: 9,
        arguments: Some(r#"{"city":"Paris"}"#.into()),
        protocol_version: Some("2025-11-25".into()),
        calls: Some(4),
        errors: Some(1),
        end_reason: Some(SessionEnd::Deleted),
        tokens: 7,
        tool_error: true,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        span_id: Some("00f067aa0ba902b7".into()),
    };
    for e in [plain, full] {
        let mut mine = Vec::new();
        write_json(&e.borrowed(), &mut mine);
        assert_eq!(
            String::from_utf8(mine).unwrap(),
            serde_json::to_string(&e).unwrap()
        );
        // Lent and copied back, a record is the same record.
        assert_eq!(e.borrowed().to_event(), e);
    }
}

#[test]
fn tool_errors_are_found_in_results() {
    assert!(tool_error(br#"{"result":{"content":[],"isError":true}}"#));
    assert!(tool_error(
        br#"{"result":{"isError" :  true,"content":[]}}"#
    ));
    assert!(!tool_error(br#"{"result":{"content":[],"isError":false}}"#));
    assert!(!tool_error(
        br#"{"result":{"content":[{"type":"text","text":"isError"}]}}"#
    ));
}

#[test]
fn event_streams_are_watched_across_any_split() {
    let mut stream = String::new();
    for i in 0..5 {
        stream.push_str(&format!(
            "id: {i}\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progress\":{i}}}}}\n\n"
        ));
    }
    let ok = format!("{stream}data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{}}}}\n\n");
    let failed = format!(
        "{stream}event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"id\":1,\r\ndata: \"error\":{{\"code\":-32602,\"message\":\"bad\"}}}}\r\n\r\n"
    );
    for (body, code) in [(ok, None), (failed, Some(-32602))] {
        for chunk in [1, 2, 7, 21, 22, 23, 64, body.len()] {
            let mut m = Meter::new(true);
            for part in body.as_bytes().chunks(chunk) {
                m.see(&Bytes::copy_from_slice(part));
            }
            m.finish();
            assert_eq!(m.progress, 5, "progress, chunks of {chunk}");
            assert_eq!(m.error_code, code, "error code, chunks of {chunk}");
            assert_eq!(m.bytes, body.len() as u64);
        }
    }
    // Only the last INSPECT bytes are kept; of a big frame, a copy.
    let mut m = Meter::new(true);
    let big = Bytes::from(vec![b'x'; 3 * INSPECT]);
    for _ in 0..4 {
        m.see(&big);
    }
    let w = m.sse.as_ref().unwrap();
    assert_eq!(w.tail.len(), 1);
    assert_eq!(w.tail_len, INSPECT);
    assert_ne!(w.tail[0].as_ptr(), big[2 * INSPECT..].as_ptr());
    assert!(w.seam.len() < PROGRESS.len());
    let small = Bytes::from(vec![b'y'; 100]);
    m.see(&small);
    let w = m.sse.as_ref().unwrap();
    assert_eq!(
        w.tail.back().unwrap().as_ptr(),
        small.as_ptr(),
        "by reference"
    );
    assert!(w.tail_len <= 2 * INSPECT, "at most two windows kept");
}

#[test]
fn inspection_counts_progress_and_finds_error_codes() {
    let (mut p, mut c) = (0, None);
    inspect(
        br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}"#,
        &mut p,
        &mut c,
    );
    inspect(
        br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"x"}}"#,
        &mut p,
        &mut c,
    );
    assert_eq!((p, c), (1, Some(-32602)));
    let (mut p, mut c) = (0, None);
    inspect(br#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"the \"error\" word"}]}}"#, &mut p, &mut c);
    assert_eq!((p, c), (0, None));
}

#[test]
fn redaction_and_hashing() {
    let body = Bytes::from_static(br#"{"user":"ann","password":"hunter2","nested":{"Token":"t"}}"#);
    let body = Some(&body);
    assert_eq!(arguments(&ArgumentsPolicy::Omit, body), None);
    let r = arguments(
        &ArgumentsPolicy::Redact(vec!["password".into(), "token".into()]),
        body,
    )
    .unwrap();
    assert!(
        r.contains("\"user\":\"ann\"") && !r.contains("hunter2") && !r.contains("\"t\""),
        "{r}"
    );
    let h = arguments(&ArgumentsPolicy::Hash, body).unwrap();
    assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
}

#[test]
fn jsonl_rotates_by_size_and_keeps_every_line() {
    let dir = std::env::temp_dir().join(format!("mcpgw-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    let sink = JsonlSink::open(JsonlConfig {
        path: path.clone(),
        max_bytes: 4096,
        keep: 100,
        buffer: 1024,
        overflow: Overflow::Drop,
    })
    .unwrap();
    for i in 0..200 {
        sink.record(
            &AuditEvent {
                event: EventKind::Call,
                id: Some(i.to_string()),
                outcome: Outcome::Ok,
                ..Default::default()
            }
            .borrowed(),
        );
    }
    sink.close();
    let mut ids = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        files += 1;
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let e: AuditEvent = serde_json::from_str(line).unwrap();
            ids.push(e.id.unwrap().parse::<u32>().unwrap());
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..200).collect::<Vec<_>>());
    assert!(files > 1, "rotated");
    for entry in std::fs::read_dir(&dir).unwrap() {
        // Rotated as the size is reached: over it by less than a line.
        let len = entry.unwrap().metadata().unwrap().len();
        assert!(len < 4096 + 200, "a file of {len} bytes");
    }
    assert_eq!(sink.dropped(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn jsonl_overflow_drops_and_counts_or_refuses() {
    let dir = std::env::temp_dir().join(format!("mcpgw-audit-ovf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    // A writer that takes the batches only when asked: the bound is
    // reached deterministically.
    let sink = JsonlSink::open_draining_every(
        JsonlConfig {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 1,
            buffer: 4,
            overflow: Overflow::Refuse,
        },
        Duration::from_secs(3600),
    )
    .unwrap();
    let event = |i: u32| AuditEvent {
        event: EventKind::Call,
        id: Some(i.to_string()),
        outcome: Outcome::Ok,
        ..Default::default()
    };
    assert!(!sink.saturated());
    for i in 0..10 {
        sink.record(&event(i).borrowed());
    }
    assert_eq!(sink.dropped(), 6);
    assert!(sink.saturated(), "refuse calls while the batch is full");
    sink.flush();
    assert!(!sink.saturated(), "the writer took the batch");
    sink.record(&event(10).borrowed());
    sink.close();
    sink.record(&event(11).borrowed());
    assert_eq!(sink.dropped(), 7, "a record after close is counted");
    let text = std::fs::read_to_string(&path).unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<AuditEvent>(l).unwrap().id.unwrap())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3", "10"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stand-in ClickHouse HTTP interface: answers the first `fail` inserts
/// with 500, the rest with 200, and keeps each request (head and body).
/// Requests a fake server received: (head, body).
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn fake_clickhouse(fail: usize) -> (String, Seen) {
    use std::io::{BufRead, BufReader, Read};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            keep.lock()
                .unwrap()
                .push((head, String::from_utf8(body).unwrap()));
            let status = if n < fail {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = conn.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, seen)
}

fn record_calls(sink: &dyn AuditSink, n: usize) {
    for i in 0..n {
        let id = i.to_string();
        sink.record(&AuditEventRef {
            event: EventKind::Call,
            time: "2026-12-05T00:00:00.000Z",
            method: Some("tools/call"),
            target: Some("echo"),
            id: Some(&id),
            ..Default::default()
        });
    }
}

#[test]
fn clickhouse_inserts_come_in_batches_with_the_query_and_credentials() {
    let (url, seen) = fake_clickhouse(0);
    let mut cfg = ClickHouseConfig::new(url, "mcp_audit");
    cfg.batch_max = 4;
    cfg.flush_ms = 60_000;
    cfg.user = Some("gw".into());
    cfg.password = Some("pw".into());
    cfg.database = Some("logs".into());
    let sink = ClickHouseSink::open(cfg).unwrap();
    record_calls(&sink, 10);
    sink.flush();
    let seen = seen.lock().unwrap().clone();
    // Sent once 4 are pending, or at the flush; every record once, in
    // order.
    let rows: Vec<Value> = seen
        .iter()
        .flat_map(|(_, b)| b.lines().map(|l| serde_json::from_str(l).unwrap()))
        .collect();
    assert_eq!(rows.len(), 10);
    assert!(rows
        .iter()
        .enumerate()
        .all(|(i, r)| r["id"].as_str() == Some(i.to_string().as_str())));
    let (head, _) = &seen[0];
    assert!(head.starts_with("POST /?input_format_skip_unknown_fields=1&query=INSERT%20INTO%20mcp_audit%20FORMAT%20JSONEachRow&database=logs HTTP/1.1"), "{head}");
    // Basic gw:pw.
    assert!(
        head.to_ascii_lowercase()
            .contains("authorization: basic z3c6chc="),
        "{head}"
    );
    sink.close();
    assert_eq!(sink.dropped(), 0);
}

#[test]
fn clickhouse_failures_are_retried_then_the_backlog_is_bounded() {
    let (url, seen) = fake_clickhouse(1);
    let mut cfg = ClickHouseConfig::new(url, "t");
    cfg.flush_ms = 0;
    let sink = ClickHouseSink::open(cfg).unwrap();
    record_calls(&sink, 3);
    // The first insert fails; the rows are kept and sent again a second
    // later, whole.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one failed insert, then its retry");
    assert_eq!(seen[0].1, seen[1].1);
    assert_eq!(seen[1].1.lines().count(), 3);
    sink.close();
    assert_eq!(sink.dropped(), 0);

    // A server that always fails: past the backlog, the oldest rows go,
    // counted; at close, the rest are counted too.
    let (url, _) = fake_clickhouse(usize::MAX);
    let mut cfg = ClickHouseConfig::new(url, "t");
    cfg.flush_ms = 0;
    cfg.backlog = 5;
    let sink = ClickHouseSink::open(cfg).unwrap();
    record_calls(&sink, 3);
    sink.flush();
    record_calls(&sink, 6);
    sink.flush();
    sink.close();
    assert_eq!(sink.dropped(), 9, "every record not inserted is counted");
}
