//! Helpers shared by the crate's unit tests.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;

use crate::body::{Body, BoxError};

/// A `tools/call` of the session era with JSON-RPC id `id`, as a client
/// posts it.
pub(crate) fn tools_call(id: u32) -> Request<Body> {
    Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(Body::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t"}}}}"#
        )))
        .expect("a valid request")
}

/// The bytes [`two_frame_event_stream`] answers with.
pub(crate) const TWO_FRAMES: [&[u8]; 2] = [b"id: 1\n", b"data: {}\n\n"];

/// A backend answering every request with one event in two frames, as an
/// event stream whose end is known only by polling past its last frame.
pub(crate) fn two_frame_event_stream() -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|_req: Request<Body>| async {
        let frames = TWO_FRAMES.map(|f| Ok::<_, BoxError>(Frame::data(Bytes::from_static(f))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut res = Response::new(Body::new(body));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        Ok::<_, Infallible>(res)
    })
}
