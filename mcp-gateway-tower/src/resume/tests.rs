use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mcp_gateway_core::session::SessionId;
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::body::{Body, BoxError};

type Frames = mpsc::Receiver<Result<Frame<Bytes>, BoxError>>;

/// A backend whose next SSE answer is fed by the test; it notes each
/// request's `Last-Event-ID`.
#[derive(Clone)]
struct Backend {
    streams: Arc<Mutex<Vec<Frames>>>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Backend {
    fn new() -> Self {
        Backend {
            streams: Default::default(),
            seen: Default::default(),
        }
    }

    /// The sender of the next answer's frames.
    fn next_stream(&self) -> mpsc::Sender<Result<Frame<Bytes>, BoxError>> {
        let (tx, rx) = mpsc::channel(64);
        self.streams.lock().unwrap().push(rx);
        tx
    }
}

impl Service<Request<Body>> for Backend {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.seen.lock().unwrap().push(
            req.headers()
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned()),
        );
        let rx = self.streams.lock().unwrap().remove(0);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let mut res = Response::new(Body::new(http_body_util::StreamBody::new(stream)));
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        std::future::ready(Ok(res))
    }
}

fn data(s: &str) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes())))
}

fn call(sid: &SessionId, id: u32) -> Request<Body> {
    let mut req = crate::test_support::tools_call(id);
    let body = req.body().as_bytes().unwrap().clone();
    let envelope = mcp_gateway_core::Envelope::parse(body.clone()).unwrap();
    let mcp = McpRequest::new(
        body,
        envelope,
        mcp_gateway_core::ProtocolVersion::V2025_11_25,
        true,
    );
    req.extensions_mut().insert(mcp);
    req.extensions_mut().insert(GatewaySession(sid.clone()));
    req
}

fn resume_req(sid: &SessionId, last: &str) -> Request<Body> {
    let mut req = Request::get("/mcp")
        .header("accept", "text/event-stream")
        .header("last-event-id", last)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(GatewaySession(sid.clone()));
    req
}

/// The `id:` and `data:` of each event in `text`.
fn events(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut scanner = mcp_gateway_core::sse::SseScanner::collecting(1 << 20);
    scanner.feed(text.as_bytes(), |e| {
        out.push((
            String::from_utf8_lossy(e.id.unwrap_or_default()).into_owned(),
            e.data_str().into_owned(),
        ))
    });
    out
}

/// `svc`'s answer to `req`.
async fn ask<S>(svc: &mut S, req: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

/// A resumption service over a fresh backend and in-memory store.
fn setup(cfg: ResumeConfig) -> (Backend, Resume<Backend>, SessionId) {
    let backend = Backend::new();
    let store = Arc::new(InMemoryEventStore::default());
    let svc = ResumeLayer::new(store, cfg).layer(backend.clone());
    (backend, svc, SessionId::random())
}

/// Starts call `id` of session `sid`, has the backend send one event `a`,
/// and reads it: the backend's sender, the client's body, the event's id.
async fn call_with_one_event(
    svc: &mut Resume<Backend>,
    backend: &Backend,
    sid: &SessionId,
    id: u32,
) -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body, String) {
    let tx = backend.next_stream();
    let mut body = ask(svc, call(sid, id)).await.into_body();
    tx.send(data("data: a\n\n")).await.unwrap();
    let first = events(&next_text(&mut body).await)[0].0.clone();
    (tx, body, first)
}

async fn next_text(body: &mut Body) -> String {
    let frame = body.frame().await.unwrap().unwrap();
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn events_get_the_gateways_ids_and_a_dropped_call_is_resumed_exactly_once() {
    let backend = Backend::new();
    let store = Arc::new(InMemoryEventStore::default());
    let mut svc = ResumeLayer::new(store.clone(), ResumeConfig::default()).layer(backend.clone());
    let sid = SessionId::random();
    let tx = backend.next_stream();
    let res = ask(&mut svc, call(&sid, 7)).await;
    let mut body = res.into_body();
    tx.send(data("id: up-1\ndata: {\"p\":1}\n\n"))
        .await
        .unwrap();
    let first = events(&next_text(&mut body).await);
    assert_eq!(first.len(), 1);
    let (id1, d1) = &first[0];
    assert_eq!(d1, "{\"p\":1}");
    assert!(id1.starts_with('p') && id1.ends_with(".1"), "{id1}");
    // The client goes away; the call goes on into the store.
    drop(body);
    tx.send(data("data: {\"p\":2}\n\n")).await.unwrap();
    tx.send(data(
        "data: {\"jsonrpc\":\"2.0\",\"result\":{},\"id\":7}\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let res = ask(&mut svc, resume_req(&sid, id1)).await;
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let got = events(std::str::from_utf8(&text).unwrap());
    let datas: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(
        datas,
        ["{\"p\":2}", "{\"jsonrpc\":\"2.0\",\"result\":{},\"id\":7}"]
    );
    assert!(got[1].0.ends_with(".3"));
    // The backend was asked once: the resumption came from the store.
    assert_eq!(backend.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_resumption_waits_for_events_still_coming() {
    let (backend, mut svc, sid) = setup(ResumeConfig::default());
    let (tx, body, id1) = call_with_one_event(&mut svc, &backend, &sid, 1).await;
    drop(body);
    let res = ask(&mut svc, resume_req(&sid, &id1)).await;
    let mut resumed = res.into_body();
    // Sent after the client resumed: it arrives through the store.
    tx.send(data("data: b\n\n")).await.unwrap();
    let mut text = String::new();
    while !text.contains("data: b") {
        text.push_str(&next_text(&mut resumed).await);
    }
    tx.send(data(
        "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let rest = resumed.collect().await.unwrap().to_bytes();
    let rest = std::str::from_utf8(&rest).unwrap();
    assert!(!rest.contains("data: b"), "b came once: {rest}");
    assert!(rest.contains("\"result\""), "then the answer: {rest}");
}

#[tokio::test]
async fn unknown_and_foreign_streams_are_refused_clearly() {
    let (backend, mut svc, sid) = setup(ResumeConfig::default());
    let (_tx, _body, id1) = call_with_one_event(&mut svc, &backend, &sid, 1).await;
    // Another session cannot read this one's stream.
    let other = SessionId::random();
    let res = ask(&mut svc, resume_req(&other, &id1)).await;
    assert_eq!(res.status(), 400);
    let json: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["error"]["code"], -32058);
    let res = ask(&mut svc, resume_req(&sid, "p0123456789abcdef.1")).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_call_cut_while_its_client_is_away_ends_with_an_error_for_the_call() {
    let (backend, mut svc, sid) = setup(ResumeConfig {
        drain_bytes: 8,
        ..ResumeConfig::default()
    });
    let (tx, body, id1) = call_with_one_event(&mut svc, &backend, &sid, 5).await;
    drop(body);
    tx.send(data("data: more than eight bytes\n\n"))
        .await
        .unwrap();
    let res = ask(&mut svc, resume_req(&sid, &id1)).await;
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let got = events(std::str::from_utf8(&text).unwrap());
    assert_eq!(got.len(), 1, "{got:?}");
    let err: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(err["id"], 5);
    assert_eq!(err["error"]["code"], -32058);
}

#[tokio::test]
async fn a_get_stream_is_replayed_then_continued_by_the_backend_from_its_own_id() {
    let (backend, mut svc, sid) = setup(ResumeConfig::default());
    let tx = backend.next_stream();
    let mut get = Request::get("/mcp").body(Body::empty()).unwrap();
    get.extensions_mut().insert(GatewaySession(sid.clone()));
    let res = ask(&mut svc, get).await;
    let mut body = res.into_body();
    tx.send(data("id: u1\ndata: one\n\nid: u2\ndata: two\n\n"))
        .await
        .unwrap();
    let got = events(&next_text(&mut body).await);
    assert_eq!(got.len(), 2);
    assert!(got[0].0.starts_with('g'));
    drop(body);
    // The client saw only the first event; the second is replayed, then
    // the backend continues after its own id of the second.
    let tx2 = backend.next_stream();
    let res = ask(&mut svc, resume_req(&sid, &got[0].0)).await;
    let mut body = res.into_body();
    tx2.send(data("id: u3\ndata: three\n\n")).await.unwrap();
    let mut text = String::new();
    while !text.contains("three") {
        text.push_str(&next_text(&mut body).await);
    }
    let got2 = events(&text);
    let datas: Vec<&str> = got2.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(datas, ["two", "three"]);
    assert_eq!(got2[0].0, got[1].0);
    assert!(got2[1].0.ends_with(".3"), "{:?}", got2[1]);
    assert_eq!(*backend.seen.lock().unwrap(), [None, Some("u2".to_owned())]);
}

#[test]
fn only_the_gateways_ids_are_read_as_its_own() {
    let sid = SessionId::random();
    let key = StreamKey::fresh(&sid, false);
    let id = key.event_id(12);
    assert_eq!(StreamKey::parse(&sid, id.as_bytes()), Some((key, 12)));
    for other in [
        "12",
        "abc.1",
        "p0123.1",
        "x0123456789abcdef.1",
        "p0123456789abcdef.x",
    ] {
        assert_eq!(StreamKey::parse(&sid, other.as_bytes()), None, "{other}");
    }
}

#[tokio::test]
async fn a_stream_the_backend_closes_before_the_answer_goes_on_from_the_backend() {
    // SSE polling (2025-11-25): the backend closes the call's stream
    // early; the client comes back with the last id it saw.
    let (backend, mut svc, sid) = setup(ResumeConfig::default());
    let tx = backend.next_stream();
    let res = ask(&mut svc, call(&sid, 7)).await;
    tx.send(data(
        "id: u1\nretry: 10\ndata: \n\nid: u2\ndata: {\"p\":1}\n\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    assert!(text.contains("retry: 10"), "{text}");
    let got = events(text);
    assert_eq!(got.len(), 2);
    let tx2 = backend.next_stream();
    tx2.send(data(
        "id: u3\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n",
    ))
    .await
    .unwrap();
    drop(tx2);
    let res = ask(&mut svc, resume_req(&sid, &got[1].0)).await;
    assert_eq!(res.status(), 200);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let rest = events(std::str::from_utf8(&text).unwrap());
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0].1, "{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}");
    assert!(
        rest[0].0.ends_with(".4"),
        "after the pause's own position: {rest:?}"
    );
    // The backend was asked for the rest after its own last id.
    assert_eq!(*backend.seen.lock().unwrap(), [None, Some("u2".to_owned())]);
}

#[tokio::test]
async fn a_call_stream_ended_early_without_ids_gets_an_error_for_the_call() {
    let (backend, mut svc, sid) = setup(ResumeConfig::default());
    let tx = backend.next_stream();
    let res = ask(&mut svc, call(&sid, 3)).await;
    tx.send(data("data: {\"p\":1}\n\n")).await.unwrap();
    drop(tx);
    let text = res.into_body().collect().await.unwrap().to_bytes();
    let got = events(std::str::from_utf8(&text).unwrap());
    assert_eq!(got.len(), 2, "{got:?}");
    let err: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
    assert_eq!(err["id"], 3);
    assert_eq!(err["error"]["code"], -32058);
}
