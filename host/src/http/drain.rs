//! Reads what is left of a request's body before the answer goes out, so that a client still
//! sending gets the answer and not a reset connection.
//!
//! The host refuses a body over its limit (413 `body_too_large`, `plugin_too_large`) as soon as
//! the limit is passed, and a handler may refuse a request (401, 415) without reading its body at
//! all. Left there, the rest of the body sits unread in the socket when hyper closes the
//! connection, and the kernel answers the closing socket's unread bytes with a TCP reset: a
//! client still writing its body then loses the answer it was sent (a flaky "connection reset"
//! or "broken pipe" instead of a 413). So the host reads the rest and throws it away, as nginx's
//! lingering close does, bounded: at most [`DRAIN_BYTES`] and [`DRAIN_TIME`], after which the
//! connection closes as before.
//!
//! Architecture invariant: this layer never looks inside a body and never changes an answer; it
//! only decides when the answer leaves.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt as _;
use http_body::{Frame, SizeHint};

/// At most this much of a refused body is read and thrown away (a body over the upload limit by
/// more than this still ends in a closed connection).
pub const DRAIN_BYTES: usize = 16 << 20;

/// At most this long is spent reading a refused body (a client that sends slowly still ends in a
/// closed connection).
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The middleware: hands the handler a body it can read as usual, and after the handler has
/// answered reads whatever it left, within the bounds above.
pub async fn drain_unread(request: Request, next: Next) -> Response {
    // Most requests (every GET) have no body: nothing could be left, so nothing to wrap.
    if http_body::Body::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let slot = Arc::new(Mutex::new(Some(body)));
    let shared = Body::new(Shared(Arc::clone(&slot)));
    let response = next.run(Request::from_parts(parts, shared)).await;
    let rest = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(rest) = rest
        && !http_body::Body::is_end_stream(&rest)
    {
        let _ = tokio::time::timeout(DRAIN_TIME, discard(rest)).await;
    }
    response
}

/// Reads `body` to its end or to [`DRAIN_BYTES`], whichever comes first.
async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len();
        if read >= DRAIN_BYTES {
            break;
        }
    }
}

/// The request's body, read through a slot the middleware keeps, so that what the handler
/// leaves unread is still there after it has answered (a handler drops the body it refuses).
struct Shared(Arc<Mutex<Option<Body>>>);

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    /// The handler refuses without reading; the middleware reads the rest after it has answered.
    #[tokio::test]
    async fn the_rest_of_a_refused_body_is_read_after_the_answer() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        let app = axum::Router::new()
            .route(
                "/",
                post(|| async { axum::http::StatusCode::PAYLOAD_TOO_LARGE }),
            )
            .layer(axum::middleware::from_fn(drain_unread));
        let sender = tokio::spawn(async move {
            for _ in 0..8 {
                tx.send(Ok(Bytes::from(vec![b'x'; 1 << 10]))).await.unwrap();
            }
            // Every chunk was taken: the channel holds 4, so 8 sends finish only if read.
        });
        let request = axum::http::Request::post("/").body(body).unwrap();
        let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
        assert_eq!(response.status(), 413);
        sender.await.unwrap();
    }
}
