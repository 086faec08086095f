//! The services a server lists through gRPC server reflection, v1 and
//! v1alpha (grpcurl 1.8 speaks v1alpha), each of which must also resolve
//! to its descriptor (what `grpcurl describe` asks for).

use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

/// Asks v1 reflection `request`; its one answer.
async fn ask_v1(
    channel: &Channel,
    request: v1::server_reflection_request::MessageRequest,
) -> v1::server_reflection_response::MessageResponse {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .expect("an answer")
}

/// Asks v1alpha reflection `request`; its one answer.
async fn ask_v1alpha(
    channel: &Channel,
    request: v1alpha::server_reflection_request::MessageRequest,
) -> v1alpha::server_reflection_response::MessageResponse {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    answers
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .expect("an answer")
}

/// The sorted service names listed by reflection v1 and by v1alpha; panics
/// unless each name resolves to a descriptor through the same version.
pub async fn list_services(channel: Channel) -> (Vec<String>, Vec<String>) {
    use v1::server_reflection_request::MessageRequest as Q1;
    use v1::server_reflection_response::MessageResponse as A1;
    use v1alpha::server_reflection_request::MessageRequest as Qa;
    use v1alpha::server_reflection_response::MessageResponse as Aa;
    let mut v1_names: Vec<String> = match ask_v1(&channel, Q1::ListServices(String::new())).await {
        A1::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("v1: {other:?}"),
    };
    v1_names.sort();
    for name in &v1_names {
        match ask_v1(&channel, Q1::FileContainingSymbol(name.clone())).await {
            A1::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty() => {}
            other => panic!("v1 lists {name} but does not describe it: {other:?}"),
        }
    }
    let mut v1alpha_names: Vec<String> =
        match ask_v1alpha(&channel, Qa::ListServices(String::new())).await {
            Aa::ListServicesResponse(list) => list.service.into_iter().map(|s| s.name).collect(),
            other => panic!("v1alpha: {other:?}"),
        };
    v1alpha_names.sort();
    for name in &v1alpha_names {
        match ask_v1alpha(&channel, Qa::FileContainingSymbol(name.clone())).await {
            Aa::FileDescriptorResponse(files) if !files.file_descriptor_proto.is_empty() => {}
            other => panic!("v1alpha lists {name} but does not describe it: {other:?}"),
        }
    }
    (v1_names, v1alpha_names)
}
