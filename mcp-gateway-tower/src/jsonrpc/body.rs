//! Reading the bounded request body once.

#[allow(unused_imports)]
use super::*;

/// The error for a body over `max` bytes (413).
fn too_large(max: usize) -> GatewayError {
    GatewayError::new(
        ErrorKind::PayloadTooLarge,
        format!("Payload Too Large: request body exceeds {max} bytes"),
    )
    .with_data(&serde_json::json!({ "maxBytes": max }))
}

/// The error for a body that could not be read (400).
fn unreadable(e: BoxError) -> GatewayError {
    GatewayError::new(
        ErrorKind::InvalidRequest,
        format!("could not read request body: {e}"),
    )
}

/// Refuses a body whose declared length is over `max`, before reading it.
pub(crate) fn check_declared_len(h: &HeaderMap, max: usize) -> Result<(), GatewayError> {
    let declared = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max));
    }
    Ok(())
}

/// The bytes of a body's first frame (`None`: the body is empty), or the
/// error response for it.
#[allow(clippy::result_large_err)]
pub(crate) fn first_frame<E: Into<BoxError>>(
    first: Option<Result<Frame<Bytes>, E>>,
    max: usize,
) -> Result<Bytes, Response<Body>> {
    let bytes = match first {
        None => Bytes::new(),
        Some(Err(e)) => return Err(error_response(&unreadable(e.into()), None)),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
    };
    if bytes.len() > max {
        return Err(error_response(&too_large(max), None));
    }
    Ok(bytes)
}

/// Reads a whole body, bounded by `max`.
pub(crate) async fn read_body<B>(mut body: Pin<Box<B>>, max: usize) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Most bodies arrive whole in one frame: take it as it is, without a
    // collector.
    let first = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        None => return Ok(Bytes::new()),
        Some(Err(e)) => return Err(unreadable(e.into())),
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
    };
    if first.len() > max {
        return Err(too_large(max));
    }
    if body.is_end_stream() {
        return Ok(first);
    }
    read_rest(first, body, max).await
}

/// Reads the rest of a body whose first `first` bytes are in, bounded by
/// `max` in all.
pub(crate) async fn read_rest<B>(
    first: Bytes,
    body: Pin<Box<B>>,
    max: usize,
) -> Result<Bytes, GatewayError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match http_body_util::Limited::new(body, max - first.len())
        .collect()
        .await
    {
        Ok(rest) if first.is_empty() => Ok(rest.to_bytes()),
        Ok(rest) => {
            let rest = rest.to_bytes();
            let mut all = bytes::BytesMut::with_capacity(first.len() + rest.len());
            all.extend_from_slice(&first);
            all.extend_from_slice(&rest);
            Ok(all.freeze())
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max)),
        Err(e) => Err(unreadable(e)),
    }
}
