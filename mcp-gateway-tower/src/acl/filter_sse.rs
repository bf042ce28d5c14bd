//! Filtering list results inside event-stream answers, one event at a time.

#[allow(unused_imports)]
use super::*;

fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

pub(crate) async fn filter_response(
    shared: Arc<Shared>,
    principal: Option<Principal>,
    kind: ListKind,
    id: Option<RequestId>,
    res: Response<Body>,
) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    if is_sse(&parts.headers) {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::new(filter_sse(shared, principal, kind, body)));
    }
    let bytes = match http_body_util::Limited::new(body, MAX_LIST_BYTES)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = GatewayError::new(
                ErrorKind::UpstreamUnavailable,
                format!("Bad Gateway: the list response could not be read for filtering: {e}"),
            );
            return error_response(&err, id.as_ref());
        }
    };
    let out = match shared.filter_bytes(principal.as_ref(), kind, &bytes) {
        Some(v) => Bytes::from(v),
        None => bytes,
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Response::from_parts(parts, Body::full(out))
}

/// An SSE body whose list results are filtered; every other event is
/// re-emitted with the same `event`, `id`, `retry` and data (comments,
/// which carry nothing for the client, are dropped).
fn filter_sse(
    shared: Arc<Shared>,
    principal: Option<Principal>,
    kind: ListKind,
    body: Body,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<Frame<Bytes>, crate::BoxError>> + Send,
> {
    let state = (body, SseScanner::collecting(MAX_LIST_BYTES), false);
    let stream = futures_util::stream::unfold(state, move |(mut body, mut scanner, done)| {
        let shared = shared.clone();
        let principal = principal.clone();
        async move {
            if done {
                return None;
            }
            loop {
                match body.frame().await {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (body, scanner, true))),
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        let mut out = Vec::new();
                        let mut oversized = false;
                        scanner.feed(&data, |ev| {
                            if ev.oversized {
                                oversized = true;
                                return;
                            }
                            if let Some(r) = ev.retry {
                                out.extend_from_slice(format!("retry: {r}\n").as_bytes());
                            }
                            let rewritten = shared.filter_bytes(principal.as_ref(), kind, ev.data);
                            let data = match &rewritten {
                                Some(v) => String::from_utf8_lossy(v),
                                None => String::from_utf8_lossy(ev.data),
                            };
                            encode_event(
                                &mut out,
                                ev.event
                                    .map(|e| std::str::from_utf8(e).unwrap_or("message")),
                                ev.id.map(|i| std::str::from_utf8(i).unwrap_or("")),
                                &data,
                            );
                        });
                        if oversized {
                            let e: crate::BoxError = "an SSE event of a list response exceeds 16 MiB; refusing to pass it unfiltered".into();
                            return Some((Err(e), (body, scanner, true)));
                        }
                        if !out.is_empty() {
                            return Some((
                                Ok(Frame::data(Bytes::from(out))),
                                (body, scanner, false),
                            ));
                        }
                    }
                }
            }
        }
    });
    http_body_util::StreamBody::new(stream.boxed())
}
