//! Request bodies that can be sent again, byte for byte.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::policy::Attempts;
use crate::BoxError;

pin_project! {
    /// The request body a [`Retry`](super::Retry) service sends: either fully buffered (and so
    /// replayable on every attempt, byte for byte, trailers included) or, when the body was
    /// larger than the buffer cap, the bytes read so far followed by the rest of the original
    /// stream (sent once, never retried, nothing lost).
    ///
    /// A buffered body announces its exact length (hyper's `content-length`) only when the
    /// original body did and carried no trailers; otherwise it goes out chunked on HTTP/1.1, as
    /// the original would have, so its trailers reach the server.
    #[derive(Debug)]
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
        // The retry policy's bookkeeping for the request this body belongs to: carried here
        // rather than in the request's extensions, which would cost an allocation per request.
        attempts: Option<Attempts>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        // Trailers are rare: boxed, so the common body stays small (requests are moved often).
        // `sized`: the original body announced its exact length (see `size_hint`).
        Buffered { data: Option<Bytes>, trailers: Option<Box<HeaderMap>>, sized: bool },
        Streaming { prefix: Option<Bytes>, #[pin] rest: B, trailers: Option<Box<HeaderMap>> },
    }
}

impl<B> ReplayBody<B> {
    /// A replayable body holding these bytes.
    pub fn buffered(data: Bytes) -> Self {
        Self {
            kind: Kind::Buffered {
                data: Some(data),
                trailers: None,
                sized: true,
            },
            attempts: None,
        }
    }

    pub(crate) fn attempts(&self) -> Option<Attempts> {
        self.attempts
    }

    pub(crate) fn set_attempts(&mut self, attempts: Attempts) {
        self.attempts = Some(attempts);
    }

    /// Whether this body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy for the next attempt, if the body is replayable (cheap: the bytes are shared).
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered {
                data,
                trailers,
                sized,
            } => Some(Self {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                    sized: *sized,
                },
                attempts: self.attempts,
            }),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Buffered { data, trailers, .. } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            KindProj::Streaming {
                prefix,
                rest,
                trailers,
            } => {
                if let Some(prefix) = prefix.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                if let Some(t) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(*t))));
                }
                match ready!(rest.poll_frame(cx)) {
                    None => Poll::Ready(None),
                    Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                    Some(Ok(frame)) => Poll::Ready(Some(Ok(
                        frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
                    ))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers, .. } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Kind::Streaming {
                prefix,
                rest,
                trailers,
            } => {
                prefix.as_ref().is_none_or(Bytes::is_empty)
                    && trailers.is_none()
                    && rest.is_end_stream()
            }
        }
    }

    /// A buffered body announces its exact length only when the original body did and no
    /// trailers were read: on HTTP/1.1 an exact length becomes `content-length`, which leaves
    /// no room for trailers (hyper drops them), while an open upper bound makes hyper send the
    /// body chunked, trailers included, as it would have sent the original.
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered {
                data,
                trailers,
                sized,
            } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                if *sized && trailers.is_none() {
                    SizeHint::with_exact(len)
                } else {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                }
            }
            Kind::Streaming { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(extra));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(extra));
                }
                hint
            }
        }
    }
}

pin_project! {
    /// Reads a body into memory up to `cap` bytes, then yields a [`ReplayBody`].
    pub(crate) struct Buffering<B> {
        body: Option<B>,
        buf: BytesMut,
        trailers: Option<Box<HeaderMap>>,
        cap: usize,
        // The body announced its exact length before it was read.
        sized: bool,
    }
}

impl<B: Body> Buffering<B> {
    pub(crate) fn new(body: B, cap: usize) -> Self {
        Self {
            sized: body.size_hint().exact().is_some(),
            body: Some(body),
            buf: BytesMut::new(),
            trailers: None,
            cap,
        }
    }
}

impl<B> Future for Buffering<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<ReplayBody<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let body = this.body.as_mut().expect("polled after completion");
        // A body that announces more than the cap is not read at all.
        if this.buf.is_empty() && body.size_hint().lower() > *this.cap as u64 {
            let rest = this.body.take().expect("checked above");
            return Poll::Ready(Ok(ReplayBody {
                kind: Kind::Streaming {
                    prefix: None,
                    rest,
                    trailers: None,
                },
                attempts: None,
            }));
        }
        loop {
            let body = this.body.as_mut().expect("polled after completion");
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    this.body.take();
                    return Poll::Ready(Ok(ReplayBody {
                        kind: Kind::Buffered {
                            data: Some(std::mem::take(this.buf).freeze()),
                            trailers: this.trailers.take(),
                            sized: *this.sized,
                        },
                        attempts: None,
                    }));
                }
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            this.buf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                        if this.buf.len() > *this.cap {
                            let rest = this.body.take().expect("checked above");
                            return Poll::Ready(Ok(ReplayBody {
                                kind: Kind::Streaming {
                                    prefix: Some(std::mem::take(this.buf).freeze()),
                                    rest,
                                    trailers: None,
                                },
                                attempts: None,
                            }));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match this.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => *this.trailers = Some(Box::new(trailers)),
                            }
                        }
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn small_bodies_are_buffered_and_replay_identically() {
        let body = Full::new(Bytes::from_static(b"hello world"));
        let replay = Buffering::new(body, 64).await.unwrap();
        assert!(replay.is_replayable());
        let copy = replay.try_clone().unwrap();
        assert_eq!(replay.collect().await.unwrap().to_bytes(), "hello world");
        assert_eq!(copy.collect().await.unwrap().to_bytes(), "hello world");
    }

    #[tokio::test]
    async fn large_streams_are_forwarded_whole_and_not_replayable() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..10)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 10]))))
            .collect();
        let body = StreamBody::new(futures_util_stream(chunks));
        let replay = Buffering::new(body, 25).await.unwrap();
        assert!(!replay.is_replayable());
        assert!(replay.try_clone().is_none());
        let all = replay.collect().await.unwrap().to_bytes();
        let expected: Vec<u8> = (0..10).flat_map(|i| vec![b'a' + i; 10]).collect();
        assert_eq!(all, expected, "nothing lost, nothing reordered");
    }

    #[tokio::test]
    async fn announced_large_bodies_are_not_read() {
        let body = Full::new(Bytes::from(vec![7u8; 100]));
        let replay = Buffering::new(body, 10).await.unwrap();
        assert!(!replay.is_replayable());
        assert_eq!(replay.collect().await.unwrap().to_bytes().len(), 100);
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let replay = Buffering::new(StreamBody::new(futures_util_stream(frames)), 64)
            .await
            .unwrap();
        let copy = replay.try_clone().unwrap();
        for body in [replay, copy] {
            let collected = body.collect().await.unwrap();
            assert_eq!(collected.trailers(), Some(&trailers));
            assert_eq!(collected.to_bytes(), "data");
        }
    }

    #[tokio::test]
    async fn only_a_sized_body_without_trailers_keeps_an_exact_length() {
        let sized = Buffering::new(Full::new(Bytes::from_static(b"data")), 64)
            .await
            .unwrap();
        assert_eq!(sized.size_hint().exact(), Some(4));
        let unsized_frames: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Ok(Frame::data(Bytes::from_static(b"data")))];
        let streamed = Buffering::new(StreamBody::new(futures_util_stream(unsized_frames)), 64)
            .await
            .unwrap();
        assert_eq!(streamed.size_hint().exact(), None);
        assert_eq!(streamed.size_hint().lower(), 4);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().unwrap());
        let with_trailers = Full::new(Bytes::from_static(b"data"))
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        let trailed = Buffering::new(with_trailers, 64).await.unwrap();
        assert_eq!(trailed.size_hint().exact(), None);
        assert_eq!(trailed.try_clone().unwrap().size_hint().exact(), None);
        assert_eq!(
            ReplayBody::<Full<Bytes>>::buffered(Bytes::from_static(b"data"))
                .size_hint()
                .exact(),
            Some(4)
        );
    }

    /// A tiny `Stream` over a vector, to avoid a futures dependency.
    fn futures_util_stream<T: Unpin>(items: Vec<T>) -> VecStream<T> {
        VecStream(items.into_iter())
    }

    struct VecStream<T>(std::vec::IntoIter<T>);

    impl<T: Unpin> futures_core::Stream for VecStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<T>> {
            Poll::Ready(self.0.next())
        }
    }
}
