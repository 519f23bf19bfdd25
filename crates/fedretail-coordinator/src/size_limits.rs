//! A size limit per kind of message, checked from the gRPC frame's length prefix
//! before the message is buffered or decoded. tonic's own limit is one number for
//! every method, so without this a registration or a poll could be as large as a
//! whole model update; and an update is held to the round's model size, not to the
//! largest model any job might have.

use crate::shared::Shared;
use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::body::Body;
use tonic::Status;

/// Bytes of a gRPC message's prefix: a compression flag, then the length (u32, BE).
const PREFIX: usize = 5;
/// Registration and polls: ids, a token, a business type.
const SMALL: usize = 64 << 10;
/// A store's evaluation metrics.
const METRICS: usize = 1 << 20;
/// A table summary (categories of every text column).
const SUMMARY: usize = 16 << 20;
/// Room beside a round's values for ids, metrics and, under SecAgg+, per-neighbour
/// shares (1 KiB per selected store).
const SLACK: usize = 1 << 20;
const PER_STORE: usize = 1 << 10;

/// The most bytes a message to `path` may have now; None for a path the service
/// does not serve (left to it to refuse).
pub(crate) fn limit_for(shared: &Shared, path: &str, max: usize) -> Option<usize> {
    let method = path.rsplit('/').next()?;
    let limit = match method {
        "RegisterStore" | "PollTask" => SMALL,
        "SubmitEvaluation" => METRICS,
        "SubmitReady" => SUMMARY,
        "SubmitUpdate" | "SubmitSecAgg" => {
            // Values are at most 8 bytes each; with no round in progress nothing large
            // is due.
            let (len, stores) = shared.read(|m| {
                m.training()
                    .map_or((0, 0), |rs| (rs.update_len, rs.tasks.len()))
            });
            len.saturating_mul(8)
                .saturating_add(SLACK)
                .saturating_add(stores.saturating_mul(PER_STORE))
        }
        _ => return None,
    };
    Some(limit.min(max))
}

/// The limit for a request path (see [`limit_for`]).
pub(crate) type LimitFor = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// The layer: every request's first message is checked against its kind's limit.
#[derive(Clone)]
pub(crate) struct SizeLimitLayer {
    pub limit: LimitFor,
    /// How long a client may take to send the first bytes of its message.
    pub wait: Duration,
}

impl<S> tower_layer::Layer<S> for SizeLimitLayer {
    type Service = SizeLimit<S>;

    fn layer(&self, inner: S) -> SizeLimit<S> {
        SizeLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct SizeLimit<S> {
    inner: S,
    layer: SizeLimitLayer,
}

type Request = http::Request<Body>;
type Response = http::Response<Body>;

impl<S> tower_service::Service<Request> for SizeLimit<S>
where
    S: tower_service::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The clone is the one polled ready (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = req.uri().path().to_string();
        let limit = (self.layer.limit)(&path);
        let wait = self.layer.wait;
        Box::pin(async move {
            let Some(limit) = limit else {
                return inner.call(req).await;
            };
            let (parts, body) = req.into_parts();
            match tokio::time::timeout(wait, checked(body, &path, limit)).await {
                Ok(Ok(body)) => inner.call(http::Request::from_parts(parts, body)).await,
                Ok(Err(status)) => Ok(status.into_http()),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "{path}: no message within {} s",
                    wait.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

/// Reads the body up to the first message's length prefix; refuses a message over
/// `limit` bytes, else gives the body back whole.
async fn checked(mut body: Body, path: &str, limit: usize) -> Result<Body, Status> {
    let mut head = BytesMut::new();
    while head.len() < PREFIX {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(f)) => match f.into_data() {
                Ok(mut data) => head.extend_from_slice(&data.copy_to_bytes(data.remaining())),
                // Trailers before any message: nothing to check.
                Err(_) => break,
            },
        }
    }
    if head.len() >= PREFIX {
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > limit {
            let kind = path.rsplit('/').next().unwrap_or(path);
            return Err(Status::resource_exhausted(format!(
                "{kind}: a message of {len} bytes is over the limit for this kind of \
                 message ({limit} bytes now)"
            )));
        }
    }
    Ok(Body::new(Prefixed {
        head: Some(head.freeze()).filter(|h| !h.is_empty()),
        rest: body,
    }))
}

/// The bytes already read, then the rest of the body.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn framed(len: u32, payload: &[u8]) -> Body {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(payload);
        Body::new(
            http_body_util::Full::new(Bytes::from(bytes)).map_err(|e| -> Status { match e {} }),
        )
    }

    #[tokio::test]
    async fn a_message_within_its_limit_passes_whole_and_one_over_is_refused_by_name() {
        let body = checked(framed(3, b"abc"), "/fedretail.v1.Coordinator/PollTask", 3)
            .await
            .unwrap();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"\0\0\0\0\x03abc");
        let e = checked(
            framed(1 << 30, b""),
            "/fedretail.v1.Coordinator/RegisterStore",
            100,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("RegisterStore") && e.message().contains("1073741824"),
            "{}",
            e.message()
        );
        // An empty body is left to the service to refuse.
        let empty =
            Body::new(http_body_util::Empty::<Bytes>::new().map_err(|e| -> Status { match e {} }));
        assert!(checked(empty, "/x/PollTask", 10).await.is_ok());
    }
}
