//! The answer to a request tonic refuses before any handler runs: one over
//! the message-size limit, or one whose message cannot be decoded.
//!
//! tonic refuses a request whose message is larger than the service's
//! decoding limit with a bare `OUT_OF_RANGE` status, and one whose bytes are
//! not a valid protobuf message of the method's request type with a bare
//! `INTERNAL`: no `google.rpc.ErrorInfo`, no reason, nothing audited. This
//! layer replaces those answers with the one the service gives for any bad
//! input, which it makes with `refuse`: kms-service authenticates and
//! audits the call and answers with its reason; table-service answers
//! likewise. Health and reflection calls (`/grpc.…`), which take no
//! credential, keep tonic's answers. Every other answer passes through
//! untouched; the layer keeps
//! only the three request headers a refusal needs (cheap, reference-counted
//! clones), and the address.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request, Response};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::metadata::{ON_BEHALF_OF, REQUEST_ID};

/// What a refusal knows of the request.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The request's `authorization`, `x-on-behalf-of` and `x-request-id`.
    pub metadata: tonic::metadata::MetadataMap,
    pub remote_addr: Option<SocketAddr>,
    /// The gRPC method, e.g. `Encrypt` of `/kms.v1.KeyManagementService/Encrypt`.
    pub method: String,
    /// What was wrong with the request.
    pub problem: Problem,
    /// tonic's account of it: of the sizes, e.g. "found 307212 bytes, the
    /// limit is: 262144 bytes"; or prost's of the decoding, e.g. "failed
    /// to decode Protobuf message: invalid varint".
    pub detail: String,
}

impl Refused {
    /// The message for a [`Problem::Malformed`] request, the same from
    /// both services: it names the request type and prost's account.
    pub fn malformed_message(&self) -> String {
        format!(
            "the request message is not a valid {}Request ({}); build it from the service's proto files",
            self.method, self.detail
        )
    }
}

/// Why tonic refused a request before any handler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The message is over the decoding limit.
    TooLarge,
    /// The message's bytes are not a valid request message.
    Malformed,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Makes the status a refused request gets.
pub type Refuse = Arc<dyn Fn(Refused) -> BoxFuture<tonic::Status> + Send + Sync>;

/// See the module documentation.
#[derive(Clone)]
pub struct OversizeLayer {
    refuse: Refuse,
}

impl OversizeLayer {
    pub fn new(refuse: Refuse) -> Self {
        OversizeLayer { refuse }
    }
}

impl<S> tower_layer::Layer<S> for OversizeLayer {
    type Service = Oversize<S>;

    fn layer(&self, inner: S) -> Oversize<S> {
        Oversize {
            inner,
            refuse: self.refuse.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Oversize<S> {
    inner: S,
    refuse: Refuse,
}

const KEPT: [HeaderName; 3] = [
    http::header::AUTHORIZATION,
    HeaderName::from_static(ON_BEHALF_OF),
    HeaderName::from_static(REQUEST_ID),
];

/// Whether a response is tonic's refusal of a request message it could
/// not take (over the size limit, or undecodable), and its account of why.
fn refused(headers: &HeaderMap) -> Option<(Problem, String)> {
    // The refusal is a trailers-only answer: its status is in the headers.
    let code = headers.get("grpc-status")?;
    if code.as_bytes() != b"11" && code.as_bytes() != b"13" {
        return None;
    }
    let status = tonic::Status::from_header_map(headers)?;
    match status.code() {
        tonic::Code::OutOfRange => status
            .message()
            .strip_prefix("Error, decoded message length too large: ")
            .map(|detail| (Problem::TooLarge, detail.to_string())),
        // prost's `DecodeError`, as tonic's codec reports it (the services'
        // own INTERNAL answers carry ErrorInfo).
        tonic::Code::Internal
            if status.details().is_empty()
                && status
                    .message()
                    .starts_with("failed to decode Protobuf message") =>
        {
            Some((Problem::Malformed, status.message().to_string()))
        }
        _ => None,
    }
}

fn remote_addr(extensions: &http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Oversize<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // A header sent twice is kept as an empty value, which kms-service
        // refuses as malformed (as it does when it sees both), rather than
        // as its first value.
        let kept = KEPT.map(|name| {
            let mut values = request.headers().get_all(&name).iter();
            let first = values.next().cloned();
            match values.next() {
                Some(_) => Some(http::HeaderValue::from_static("")),
                None => first,
            }
        });
        let remote_addr = remote_addr(request.extensions());
        let uri = request.uri().clone();
        let answer = self.inner.call(request);
        let refuse = self.refuse.clone();
        Box::pin(async move {
            let response = answer.await?;
            // Only the services' own calls: health and reflection keep
            // tonic's answers (they take no credential).
            if uri.path().starts_with("/grpc.") {
                return Ok(response);
            }
            let Some((problem, detail)) = refused(response.headers()) else {
                return Ok(response);
            };
            let mut headers = HeaderMap::new();
            for (name, value) in KEPT.into_iter().zip(kept) {
                if let Some(value) = value {
                    headers.insert(name, value);
                }
            }
            let method = uri.path().rsplit('/').next().unwrap_or_default();
            let status = refuse(Refused {
                metadata: tonic::metadata::MetadataMap::from_headers(headers),
                remote_addr,
                method: method.to_string(),
                problem,
                detail,
            })
            .await;
            Ok(status.into_http())
        })
    }
}
