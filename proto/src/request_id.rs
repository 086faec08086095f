//! Every call has a request id: the caller's `x-request-id` (1–128 visible
//! ASCII characters), or a fresh UUID put in its place. The call is handled
//! inside a `request` span carrying it (so every log line the call causes
//! names it, JSON logs in `span`), and the answer carries it back in
//! `x-request-id`, so a caller can quote the id that the audit log, the
//! table events and the service logs know the call by. (tonic's own
//! answers from layers outside this one lack it: DEADLINE_EXCEEDED for a
//! call's `grpc-timeout`.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tracing::Instrument;

use crate::metadata::REQUEST_ID;

/// Longest request id taken from a caller.
pub const MAX_REQUEST_ID: usize = 128;

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower_layer::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

/// The caller's request id, if it is one to keep: sent once, 1–128
/// visible ASCII characters.
fn callers(request: &http::HeaderMap) -> Option<HeaderValue> {
    let mut values = request.get_all(REQUEST_ID).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = first.to_str().ok()?;
    (!text.is_empty() && text.len() <= MAX_REQUEST_ID).then(|| first.clone())
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RequestId<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = callers(request.headers()).unwrap_or_else(|| {
            let fresh = HeaderValue::from_str(&crate::random::random_uuid().to_string())
                .expect("a UUID is a valid header value");
            request.headers_mut().insert(REQUEST_ID, fresh.clone());
            fresh
        });
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            method = request.uri().path(),
        );
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = answer.await?;
                response.headers_mut().insert(REQUEST_ID, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower_layer::Layer;
    use tower_service::Service;

    use super::*;

    /// Answers with the request id the handler saw, and whether it ran in
    /// the `request` span.
    async fn call(headers: &[(&str, &str)]) -> (String, String, bool) {
        let mut service = RequestIdLayer.layer(tower_service_fn(|request: Request<()>| {
            let seen = request.headers()[REQUEST_ID].to_str().unwrap().to_string();
            let in_span = tracing::Span::current()
                .metadata()
                .is_some_and(|m| m.name() == "request");
            async move { Ok::<_, Infallible>(Response::new((seen, in_span))) }
        }));
        let mut request = Request::new(());
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let response = service.call(request).await.unwrap();
        let echoed = response.headers()[REQUEST_ID].to_str().unwrap().to_string();
        let (seen, in_span) = response.into_body();
        (seen, echoed, in_span)
    }

    fn tower_service_fn<F, Fut>(f: F) -> ServiceFn<F>
    where
        F: FnMut(Request<()>) -> Fut,
    {
        ServiceFn(f)
    }

    struct ServiceFn<F>(F);

    impl<F, Fut, T> Service<Request<()>> for ServiceFn<F>
    where
        F: FnMut(Request<()>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Infallible>> + Send + 'static,
    {
        type Response = Response<T>;
        type Error = Infallible;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<()>) -> Fut {
            (self.0)(request)
        }
    }

    #[tokio::test]
    async fn a_callers_id_is_kept_and_echoed() {
        let (seen, echoed, _) = call(&[(REQUEST_ID, "order-42")]).await;
        assert_eq!((seen.as_str(), echoed.as_str()), ("order-42", "order-42"));
    }

    #[tokio::test]
    async fn a_missing_or_unusable_id_is_replaced_by_a_fresh_one() {
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        for headers in [
            vec![],
            vec![(REQUEST_ID, "")],
            vec![(REQUEST_ID, long.as_str())],
            vec![(REQUEST_ID, "a"), (REQUEST_ID, "b")],
        ] {
            let (seen, echoed, _) = call(&headers).await;
            assert_eq!(seen, echoed, "{headers:?}");
            assert!(uuid::Uuid::parse_str(&seen).is_ok(), "{headers:?}: {seen}");
        }
        let (first, _, _) = call(&[]).await;
        let (second, _, _) = call(&[]).await;
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn the_call_runs_in_the_request_span() {
        // Spans exist only under a subscriber that tracks them.
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        // A test run before this one without a subscriber may have cached
        // the span as disabled for the whole process.
        tracing::callsite::rebuild_interest_cache();
        let (_, _, in_span) = call(&[]).await;
        assert!(in_span);
    }
}
