//! The services a server lists through gRPC server reflection, v1 and
//! v1alpha (grpcurl 1.8 speaks v1alpha).

use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};

/// The sorted service names listed by reflection v1 and by v1alpha.
pub async fn list_services(channel: Channel) -> (Vec<String>, Vec<String>) {
    let sorted = |mut names: Vec<String>| {
        names.sort();
        names
    };
    let v1_list = {
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
                sorted(list.service.into_iter().map(|s| s.name).collect())
            }
            other => panic!("v1: {other:?}"),
        }
    };
    let v1alpha_list = {
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.message().await.unwrap().unwrap().message_response {
            Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                list,
            )) => sorted(list.service.into_iter().map(|s| s.name).collect()),
            other => panic!("v1alpha: {other:?}"),
        }
    };
    (v1_list, v1alpha_list)
}
