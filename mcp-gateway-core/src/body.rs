//! [`Body`]: the one request and response body type of the gateway.
//!
//! Every layer speaks `Request<Body>` / `Response<Body>`, so layers compose in
//! any order and third-party body types (hyper's `Incoming`, rmcp's boxed
//! bodies) never leak into the public API. Small bodies (the parsed request,
//! gateway errors) are held inline without boxing; streams are boxed once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

/// The error type of [`Body`] and of the upstream services.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body: empty, one buffer, or a boxed stream.
#[derive(Debug, Default)]
pub struct Body(Inner);

#[derive(Debug, Default)]
enum Inner {
    #[default]
    Empty,
    Full(Option<Bytes>),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body(Inner::Empty)
    }

    /// A body of one buffer (shared, not copied).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        if b.is_empty() {
            Body::empty()
        } else {
            Body(Inner::Full(Some(b)))
        }
    }

    /// Wraps any body (boxing it once; a [`Body`] is returned as it is).
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Avoid boxing a Body inside a Body when a generic layer wraps a
        // service that already speaks Body.
        let mut slot = Some(body);
        if let Some(b) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<Body>>() {
            return b.take().unwrap_or_default();
        }
        let body = slot.take().expect("still present");
        Body(Inner::Stream(body.map_err(Into::into).boxed_unsync()))
    }

    /// A body of `body`, whose errors already are [`BoxError`]s: boxed
    /// as it is, without [`new`](Self::new)'s check for a `Body` inside
    /// and its error conversion on every frame (for layers that wrap
    /// every response).
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        Body(Inner::Stream(body.boxed_unsync()))
    }

    /// The bytes, if this body is held in one buffer.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.0 {
            Inner::Full(b) => b.as_ref(),
            _ => None,
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body::full(b)
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::full(Bytes::from(s))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::full(Bytes::from(v))
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::full(Bytes::from_static(s.as_bytes()))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(s) => Pin::new(s).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream(s) => s.size_hint(),
        }
    }
}
