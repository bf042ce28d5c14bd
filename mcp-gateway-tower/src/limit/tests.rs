//! Tests of the limit layer and the in-memory limiter.

use super::*;

#[test]
fn anonymous_callers_are_keyed_by_address() {
    let mut req = Request::new(());
    assert_eq!(&*limit_subject(&req), "anon");
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:5555".parse().unwrap()));
    assert_eq!(&*limit_subject(&req), "anon:192.0.2.7");
    let p = Principal::builder("ann").build();
    req.extensions_mut().insert(p.clone());
    assert_eq!(limit_subject(&req), *p.key());
}

fn key(kind: LimitKind, subject: &str) -> LimitKey {
    LimitKey {
        kind,
        subject: subject.into(),
        tool: None,
    }
}

#[tokio::test]
async fn permits_are_released_as_the_answer_ends_not_when_it_is_dropped() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let limiter = Arc::new(InMemoryLimiter::new());
    let cfg = LimitConfig {
        principal_in_flight: Some(1),
        backend_in_flight: Some(1),
        ..Default::default()
    };
    let svc = tower::ServiceBuilder::new()
        .layer(crate::jsonrpc::JsonRpcLayer::default())
        .layer(LimitLayer::new(cfg, "b", limiter.clone()))
        .service(crate::test_support::two_frame_event_stream());
    let mut req = crate::test_support::tools_call(1);
    // Per-client caps need a client to tell apart (see `limit_subject`).
    req.extensions_mut()
        .insert(ClientAddr("192.0.2.7:5555".parse().unwrap()));
    let held = || {
        (
            limiter.held(&key(LimitKind::PrincipalInFlight, "anon:192.0.2.7")),
            limiter.held(&key(LimitKind::BackendInFlight, "b")),
        )
    };
    let mut body = svc.oneshot(req).await.unwrap().into_body();
    assert_eq!(held(), (1, 1), "held while the answer runs");
    body.frame().await.unwrap().unwrap();
    assert_eq!(held(), (1, 1), "held until the last frame");
    while let Some(f) = body.frame().await {
        f.unwrap();
    }
    // The body is still alive (a server drops it after writing the end).
    assert_eq!(held(), (0, 0), "released when the end was seen");
    drop(body);
    assert_eq!(held(), (0, 0));
}

fn block<T>(f: Answer<'_, T>) -> T {
    futures_util::FutureExt::now_or_never(f).expect("the in-memory limiter is ready at once")
}

#[test]
fn idle_entries_are_swept_and_thread_caches_follow() {
    let l = InMemoryLimiter::new();
    let rate = key(LimitKind::PrincipalRate, "ann");
    let q = Quota {
        burst: 1,
        per_second: 1000.0,
    };
    block(l.hit(&rate, &q)).unwrap();
    assert!(block(l.hit(&rate, &q)).is_err(), "burst of one");
    let busy = key(LimitKind::PrincipalInFlight, "ann");
    let slot = block(l.acquire(&busy, 1)).unwrap();
    assert_eq!(l.len(), 2);
    // The bucket refills in a millisecond; the held slot keeps its entry.
    let t0 = std::time::Instant::now();
    while !l.sweep() {
        assert!(t0.elapsed() < Duration::from_secs(5), "never idle");
        std::thread::yield_now();
    }
    assert_eq!(l.len(), 1);
    assert_eq!(l.held(&busy), 1);
    // This thread's cache was dropped with the generation: the count
    // it sees is the table's, so the cap still holds.
    assert!(block(l.acquire(&busy, 1)).is_none());
    drop(slot);
    assert!(l.sweep());
    assert!(l.is_empty());
    assert!(block(l.acquire(&busy, 1)).is_some(), "a new entry");
    assert!(block(l.hit(&rate, &q)).is_ok(), "a full bucket again");
}

#[test]
fn kept_keys_do_not_keep_the_request_body() {
    let l = InMemoryLimiter::new();
    let body = Bytes::from(vec![b'x'; 4096]);
    let key = LimitKey {
        kind: LimitKind::PrincipalToolRate,
        subject: "ann".into(),
        tool: Some(body.slice(10..20)),
    };
    let q = Quota {
        burst: 5,
        per_second: 1.0,
    };
    block(l.hit(&key, &q)).unwrap();
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    for shard in &l.shards {
        for k in shard.read().unwrap().keys() {
            let p = k.tool.as_ref().unwrap().as_ptr() as usize;
            assert!(!range.contains(&p), "the stored key shares the body");
        }
    }
    let cell = l.local.get().unwrap().borrow();
    for k in cell.entries.keys() {
        let p = k.tool.as_ref().unwrap().as_ptr() as usize;
        assert!(!range.contains(&p), "the cached key shares the body");
    }
}

#[test]
fn a_batchs_slots_beyond_the_first_two_are_all_held_and_given_back() {
    struct Counted(Arc<AtomicU32>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let held = Arc::new(AtomicU32::new(0));
    let slot = || {
        held.fetch_add(1, Ordering::AcqRel);
        Slot::new(Counted(held.clone()))
    };
    let (mut a, mut b) = (Slots::default(), Slots::default());
    assert!(a.is_empty());
    a.push(slot());
    for _ in 0..3 {
        b.push(slot());
    }
    a.append(b);
    assert!(!a.is_empty());
    assert_eq!(held.load(Ordering::Acquire), 4);
    a.release();
    assert!(a.is_empty());
    assert_eq!(held.load(Ordering::Acquire), 0);
}

#[test]
fn in_memory_slots_and_windows() {
    let l = InMemoryLimiter::new();
    let key = key(LimitKind::PrincipalInFlight, "a");
    let s1 = block(l.acquire(&key, 2)).unwrap();
    let s2 = block(l.acquire(&key, 2)).unwrap();
    assert!(block(l.acquire(&key, 2)).is_none());
    assert_eq!(l.held(&key), 2);
    drop(s1);
    assert_eq!(l.held(&key), 1);
    drop(s2);
    assert_eq!(l.held(&key), 0);
    let b = Budget {
        amount: 10,
        window_secs: 60,
    };
    assert!(block(l.charge(&key, &b, 6, true)).is_ok());
    assert!(
        block(l.charge(&key, &b, 5, true)).is_err(),
        "would pass the budget"
    );
    assert!(
        block(l.charge(&key, &b, 5, false)).is_ok(),
        "results are always paid"
    );
    let wait = block(l.charge(&key, &b, 1, true)).unwrap_err();
    assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
    assert_eq!(ApproxTokenCounter.count(b"12345"), 2);
}

/// The session layer learns of the limit layer's observer from the
/// requests themselves: a stack built with no `observe` call gives a
/// session's slot back when the session is deleted.
#[tokio::test]
async fn session_slots_are_released_without_registering_an_observer() {
    use crate::session::SessionLayer;
    use crate::upstream::Upstreams;
    use crate::ServiceBuilderExt;
    use http_body_util::BodyExt;
    use mcp_gateway_core::session::InMemorySessionStore;
    use tower::ServiceExt;

    // A backend that opens a session on `initialize` and ends it on DELETE.
    let backend = tower::service_fn(|req: Request<Body>| async move {
        let mut res = Response::new(Body::empty());
        if req.method() == http::Method::POST {
            *res.body_mut() = Body::from(
                r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"b","version":"1"}}}"#,
            );
            let h = res.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("mcp-session-id", "upstream-1".parse().unwrap());
        }
        Ok::<_, Infallible>(res)
    });
    let limit = LimitLayer::new(
        LimitConfig {
            principal_sessions: Some(1),
            ..Default::default()
        },
        "b",
        Arc::new(InMemoryLimiter::default()),
    );
    let upstreams = Upstreams::new(vec![Upstreams::boxed(backend)]);
    let svc = tower::ServiceBuilder::new()
        .mcp_jsonrpc(Default::default())
        .mcp_limit(limit.clone())
        .mcp_session(SessionLayer::new(
            InMemorySessionStore::default(),
            upstreams.instances(),
        ))
        .service(upstreams);
    let initialize = || {
        Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .extension(ClientAddr("192.0.2.7:5555".parse().unwrap()))
            .body(Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#,
            ))
            .unwrap()
    };
    let res = svc.clone().oneshot(initialize()).await.unwrap();
    assert_eq!(res.status(), 200);
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = res.into_body().collect().await;
    assert_eq!(limit.sessions_held(), 1);
    // One session per caller: a second is refused while the first lives.
    let res = svc.clone().oneshot(initialize()).await.unwrap();
    assert_eq!(res.status(), 429, "the cap holds");
    let delete = Request::delete("/mcp")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(Body::empty())
        .unwrap();
    let res = svc.clone().oneshot(delete).await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(limit.sessions_held(), 0, "the slot came back");
    let res = svc.clone().oneshot(initialize()).await.unwrap();
    assert_eq!(res.status(), 200);
}
