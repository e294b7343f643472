//! The response body of every layer: the inner service's body or a generated one.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that passed through one of this crate's layers: either the inner
    /// service's body, untouched, or the small generated body of an
    /// [`ErrorResponse`](crate::ErrorResponse).
    ///
    /// An enum rather than a boxed body, so wrapping a service costs no allocation and keeps the
    /// inner body's type (and its `Sync`-ness, size hints and trailers).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Generated { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A generated body holding these bytes.
    pub(crate) fn generated(data: Bytes) -> Self {
        Self {
            kind: Kind::Generated {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// Whether this is a generated body (rather than the inner service's).
    pub fn is_generated(&self) -> bool {
        matches!(self.kind, Kind::Generated { .. })
    }

    /// The inner service's body, if this is not a generated one.
    pub fn into_inner(self) -> Option<B> {
        match self.kind {
            Kind::Inner { body } => Some(body),
            Kind::Generated { .. } => None,
        }
    }
}

impl<B> From<Bytes> for ResponseBody<B> {
    /// A generated body holding these bytes.
    fn from(data: Bytes) -> Self {
        Self::generated(data)
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Generated { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Generated { data } => data.is_none(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Generated { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn generated_body_yields_once_with_exact_size() {
        let body = ResponseBody::<Full<Bytes>>::generated(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn inner_body_passes_through() {
        let body = ResponseBody::new(Full::new(Bytes::from_static(b"inner")));
        assert!(!body.is_generated());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "inner");
    }

    #[test]
    fn empty_generated_body_is_at_end() {
        let body = ResponseBody::<Full<Bytes>>::generated(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
