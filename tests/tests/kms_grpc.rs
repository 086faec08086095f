//! kms-service as a real gRPC server on an ephemeral port, driven by the
//! generated clients: status codes, `ErrorInfo` reasons, limits, health and
//! restart.

use std::time::Duration;

use kms_service::config::ServeConfig;
use kms_service::server::RunningServer;
use lockbox_proto::iam::v1 as iam;
use lockbox_proto::iam::v1::identity_service_client::IdentityServiceClient;
use lockbox_proto::kms::v1 as pb;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_types::StatusExt;

struct Kms {
    server: RunningServer,
    admin: String,
}

#[path = "support/raw.rs"]
mod raw;

async fn start(dir: &std::path::Path) -> Kms {
    let server = RunningServer::start(ServeConfig::for_data_dir(dir.to_path_buf()))
        .await
        .expect("kms-service starts");
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .expect("admin token file")
        .trim()
        .to_string();
    Kms { server, admin }
}

async fn channel(kms: &Kms) -> Channel {
    Channel::from_shared(format!("http://{}", kms.server.addr))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if !token.is_empty() {
        let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Creates a symmetric key as `admin`; returns its id.
async fn new_key(client: &mut KeyManagementServiceClient<Channel>, admin: &str) -> String {
    client
        .create_key(authed(admin, pb::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

/// Asserts the status code, the `ErrorInfo` reason and a message fragment.
#[track_caller]
fn check_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    reason: &str,
    needle: &str,
) {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, reason);
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

#[tokio::test]
async fn seed_walkthrough_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let mut iam_client = IdentityServiceClient::new(ch);
    let key = client
        .create_key(authed(
            &kms.admin,
            pb::CreateKeyRequest {
                description: "seed".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    let context = std::collections::HashMap::from([("table".to_string(), "orders".to_string())]);
    let blob = client
        .encrypt(authed(
            &kms.admin,
            pb::EncryptRequest {
                key_id: key.clone(),
                plaintext: b"hello".to_vec(),
                encryption_context: context.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let decrypt = |token: &str, ctx: std::collections::HashMap<String, String>| {
        authed(
            token,
            pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                encryption_context: ctx,
                ..Default::default()
            },
        )
    };
    let plain = client
        .decrypt(decrypt(&kms.admin, context.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.plaintext, b"hello");
    let wrong = std::collections::HashMap::from([("table".to_string(), "other".to_string())]);
    check_status(
        client.decrypt(decrypt(&kms.admin, wrong)).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
        "the ciphertext is invalid, was altered, or does not match the encryption context",
    );

    iam_client
        .create_user(authed(
            &kms.admin,
            iam::CreateUserRequest {
                user_name: "nextwork-kms-user".into(),
                kind: 0,
            },
        ))
        .await
        .unwrap();
    iam_client
        .attach_user_policy(authed(
            &kms.admin,
            iam::AttachUserPolicyRequest {
                user_name: "nextwork-kms-user".into(),
                policy_name: "TableFullAccess".into(),
            },
        ))
        .await
        .unwrap();
    let user = iam_client
        .create_access_token(authed(
            &kms.admin,
            iam::CreateAccessTokenRequest {
                user_name: "nextwork-kms-user".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token;
    check_status(
        client.decrypt(decrypt(&user, context.clone())).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "User: user/nextwork-kms-user is not authorized to perform: kms:Decrypt",
    );
    let policy = client
        .get_key_policy(authed(
            &kms.admin,
            pb::GetKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .policy;
    let mut doc: serde_json::Value = serde_json::from_str(&policy).unwrap();
    doc["Statement"].as_array_mut().unwrap().push(serde_json::json!({
        "Sid": "AllowKeyUse",
        "Effect": "Allow",
        "Principal": {"AWS": "user/nextwork-kms-user"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
        "Resource": "*"
    }));
    client
        .put_key_policy(authed(
            &kms.admin,
            pb::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: "default".into(),
                policy: doc.to_string(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        client
            .decrypt(decrypt(&user, context))
            .await
            .unwrap()
            .into_inner()
            .plaintext,
        b"hello"
    );
    kms.server.stop().await.unwrap();
    let report = kms_service::audit::verify(
        &dir.path().join("audit/audit.jsonl"),
        Some(&dir.path().join("audit/audit.jsonl.checkpoints")),
        None,
    )
    .unwrap();
    assert!(report.records >= 10);
}

#[tokio::test]
async fn statuses_carry_error_info_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    check_status(
        client
            .list_keys(authed("", pb::ListKeysRequest::default()))
            .await,
        Code::Unauthenticated,
        "MissingAuthenticationTokenException",
        "authorization: Bearer",
    );
    check_status(
        client
            .list_keys(authed("lbx_unknown", pb::ListKeysRequest::default()))
            .await,
        Code::Unauthenticated,
        "UnrecognizedClientException",
        "not a valid access token",
    );
    check_status(
        client
            .describe_key(authed(
                &kms.admin,
                pb::DescribeKeyRequest {
                    key_id: "alias/missing".into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
        "NotFoundException",
        "alias/missing",
    );
    check_status(
        client
            .generate_random(authed(
                &kms.admin,
                pb::GenerateRandomRequest {
                    number_of_bytes: Some(0),
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "1–1024",
    );
    let key = client
        .create_key(authed(
            &kms.admin,
            pb::CreateKeyRequest {
                key_spec: pb::KeySpec::Hmac256.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(
        key.mac_algorithms,
        vec![i32::from(pb::MacAlgorithm::HmacSha256)]
    );
    check_status(
        client
            .encrypt(authed(
                &kms.admin,
                pb::EncryptRequest {
                    key_id: key.key_id.clone(),
                    plaintext: b"x".to_vec(),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
        "GENERATE_VERIFY_MAC",
    );
    check_status(
        client
            .generate_data_key(authed(
                &kms.admin,
                pb::GenerateDataKeyRequest {
                    key_id: key.key_id.clone(),
                    number_of_bytes: Some(1025),
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "1025",
    );
    check_status(
        client
            .schedule_key_deletion(authed(
                &kms.admin,
                pb::ScheduleKeyDeletionRequest {
                    key_id: key.key_id.clone(),
                    pending_window_in_days: Some(31),
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "7–30",
    );
    // Health answers SERVING for the services.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&kms).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "kms.v1.KeyManagementService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    kms.server.stop().await.unwrap();
}

#[tokio::test]
async fn state_and_ciphertexts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let key = new_key(&mut client, &kms.admin).await;
    client
        .create_alias(authed(
            &kms.admin,
            pb::CreateAliasRequest {
                alias_name: "alias/app".into(),
                target_key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    let grant = client
        .create_grant(authed(
            &kms.admin,
            pb::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: "user/admin".into(),
                operations: vec![pb::GrantOperation::Decrypt.into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let blob = client
        .encrypt(authed(
            &kms.admin,
            pb::EncryptRequest {
                key_id: "alias/app".into(),
                plaintext: b"kept".to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    client
        .rotate_key_on_demand(authed(
            &kms.admin,
            pb::RotateKeyOnDemandRequest {
                key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    let admin = kms.admin.clone();
    kms.server.stop().await.unwrap();

    let server = RunningServer::start(ServeConfig::for_data_dir(dir.path().to_path_buf()))
        .await
        .unwrap();
    assert!(server.admin_token_file.is_none(), "no second bootstrap");
    let ch = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = KeyManagementServiceClient::new(ch);
    let plain = client
        .decrypt(authed(
            &admin,
            pb::DecryptRequest {
                ciphertext_blob: blob,
                key_id: "alias/app".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (plain.plaintext.as_slice(), plain.key_version),
        (&b"kept"[..], 1)
    );
    let meta = client
        .describe_key(authed(
            &admin,
            pb::DescribeKeyRequest {
                key_id: key.clone(),
                grant_tokens: vec![grant.grant_token],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    assert_eq!(meta.current_key_version, 2);
    let grants = client
        .list_grants(authed(
            &admin,
            pb::ListGrantsRequest {
                key_id: key,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(grants.len(), 1);
    server.stop().await.unwrap();
}

/// A request the gRPC layer cannot even read (an unknown enum value,
/// contradictory fields) is still authenticated first and audited: without
/// a credential it is UNAUTHENTICATED, with one it is the validation error,
/// and each leaves one audit record.
#[tokio::test]
async fn unreadable_requests_are_authenticated_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let mut iam_client = IdentityServiceClient::new(ch.clone());
    let audit = dir.path().join("audit/audit.jsonl");
    let records = || std::fs::read_to_string(&audit).unwrap().lines().count();
    let bad_mac = || pb::GenerateMacRequest {
        key_id: "alias/any".into(),
        message: b"m".to_vec(),
        mac_algorithm: 99,
        ..Default::default()
    };
    let before = records();
    check_status(
        client.generate_mac(authed("", bad_mac())).await,
        Code::Unauthenticated,
        "MissingAuthenticationTokenException",
        "authorization: Bearer",
    );
    check_status(
        client.generate_mac(authed(&kms.admin, bad_mac())).await,
        Code::InvalidArgument,
        "ValidationException",
        "99",
    );
    // ErrorInfo says whose credential failed: a caller's own here, a
    // service's own or its caller's when a service forwards one.
    let unknown = client
        .generate_random(authed(
            "lbx_unknown",
            pb::GenerateRandomRequest {
                number_of_bytes: Some(8),
            },
        ))
        .await
        .expect_err("refused");
    assert_eq!(
        unknown
            .get_details_error_info()
            .unwrap()
            .metadata
            .get("credential")
            .map(String::as_str),
        Some("caller")
    );
    check_status(
        client
            .generate_data_key(authed(
                "lbx_unknown",
                pb::GenerateDataKeyRequest {
                    key_id: "alias/any".into(),
                    number_of_bytes: Some(32),
                    key_spec: pb::DataKeySpec::Aes256.into(),
                    ..Default::default()
                },
            ))
            .await,
        Code::Unauthenticated,
        "UnrecognizedClientException",
        "not a valid access token",
    );
    check_status(
        iam_client
            .create_user(authed(
                &kms.admin,
                iam::CreateUserRequest {
                    user_name: "bob".into(),
                    kind: 42,
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "42",
    );
    // Over the message-size limit (256 KiB by default): tonic refuses it
    // before any handler, and the answer is still kms-service's own,
    // authenticated and audited.
    let huge = |token: &str| {
        let mut request = authed(
            token,
            pb::EncryptRequest {
                key_id: "alias/any".into(),
                plaintext: vec![0; 300 * 1024],
                ..Default::default()
            },
        );
        request
            .metadata_mut()
            .insert("x-request-id", "oversized-1".parse().unwrap());
        request
    };
    check_status(
        client.encrypt(huge(&kms.admin)).await,
        Code::ResourceExhausted,
        "LimitExceededException",
        "the limit is: 262144 bytes); kms-service takes messages up to --max-message-bytes (KMS_MAX_MESSAGE_BYTES)",
    );
    check_status(
        client.encrypt(huge("")).await,
        Code::Unauthenticated,
        "MissingAuthenticationTokenException",
        "",
    );
    // Bytes that are no EncryptRequest (its key_id, field 1, not UTF-8):
    // tonic refuses them before any handler, and the answer is still
    // kms-service's own, authenticated and audited.
    check_status(
        raw::call(
            ch.clone(),
            "/kms.v1.KeyManagementService/Encrypt",
            authed(&kms.admin, vec![0x0a, 0x01, 0xff]),
        )
        .await,
        Code::InvalidArgument,
        "ValidationException",
        "the request message is not a valid EncryptRequest (failed to decode Protobuf message: EncryptRequest.key_id",
    );
    check_status(
        raw::call(
            ch.clone(),
            "/kms.v1.KeyManagementService/Encrypt",
            authed("", vec![0xff, 0xff]),
        )
        .await,
        Code::Unauthenticated,
        "MissingAuthenticationTokenException",
        "",
    );
    // Health (no credential) keeps tonic's own answer, and records nothing.
    let health = raw::call(
        ch.clone(),
        "/grpc.health.v1.Health/Check",
        authed("", vec![0x0a, 0x01, 0xff]),
    )
    .await
    .expect_err("not a HealthCheckRequest");
    assert_eq!(health.code(), Code::Internal, "{health:?}");
    assert!(health.get_details_error_info().is_none(), "{health:?}");
    // The connection still serves.
    check_status(
        client.generate_mac(authed(&kms.admin, bad_mac())).await,
        Code::InvalidArgument,
        "ValidationException",
        "99",
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .skip(before)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records() - before, 10, "{lines:#?}");
    let names: Vec<&str> = lines
        .iter()
        .map(|r| r["event_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "GenerateMac",
            "GenerateMac",
            "GenerateRandom",
            "GenerateDataKey",
            "CreateUser",
            "Encrypt",
            "Encrypt",
            "Encrypt",
            "Encrypt",
            "GenerateMac"
        ]
    );
    assert_eq!(lines[7]["principal"], "user/admin");
    assert_eq!(lines[7]["error_code"], "ValidationException");
    assert_eq!(lines[8]["decision"], "Unauthenticated");
    assert_eq!(lines[0]["decision"], "Unauthenticated");
    assert_eq!(lines[1]["principal"], "user/admin");
    assert_eq!(lines[5]["principal"], "user/admin");
    assert_eq!(lines[5]["error_code"], "LimitExceededException");
    assert_eq!(lines[5]["request_id"], "oversized-1");
    assert!(
        lines[5]["source_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{:?}",
        lines[5]
    );
    assert_eq!(lines[6]["decision"], "Unauthenticated");
}

/// A service's call on behalf of a user is answered with the user's
/// principal in `x-principal` (on success and on refusal), and
/// `x-authorize` metadata (repeatable) makes it conditional on the user
/// also being allowed each table action named.
#[tokio::test]
async fn x_authorize_conditions_a_call_and_x_principal_names_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let mut iam_client = IdentityServiceClient::new(ch);
    let mut token_for = async |name: &str, kind: iam::PrincipalKind, policy: Option<&str>| {
        iam_client
            .create_user(authed(
                &kms.admin,
                iam::CreateUserRequest {
                    user_name: name.into(),
                    kind: kind.into(),
                },
            ))
            .await
            .unwrap();
        if let Some(policy) = policy {
            iam_client
                .attach_user_policy(authed(
                    &kms.admin,
                    iam::AttachUserPolicyRequest {
                        user_name: name.into(),
                        policy_name: policy.into(),
                    },
                ))
                .await
                .unwrap();
        }
        iam_client
            .create_access_token(authed(
                &kms.admin,
                iam::CreateAccessTokenRequest {
                    user_name: match kind {
                        iam::PrincipalKind::Service => format!("service/{name}"),
                        _ => name.to_string(),
                    },
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .token
    };
    let service = token_for("tables", iam::PrincipalKind::Service, None).await;
    let bob = token_for("bob", iam::PrincipalKind::User, Some("TableReadOnlyAccess")).await;
    let mut iam_client = IdentityServiceClient::new(channel(&kms).await);
    let call = |required: &[&[u8]]| {
        let mut request = authed(&service, iam::GetCallerIdentityRequest {});
        let meta = request.metadata_mut();
        meta.insert("x-on-behalf-of", format!("Bearer {bob}").parse().unwrap());
        for value in required {
            meta.append("x-authorize", MetadataValue::try_from(*value).unwrap());
        }
        request
    };
    let principal = |meta: &tonic::metadata::MetadataMap| {
        meta.get("x-principal")
            .map(|v| v.to_str().unwrap().to_string())
    };

    let allowed = iam_client
        .get_caller_identity(call(&[b"table:GetItem table/orders"]))
        .await
        .unwrap();
    assert_eq!(principal(allowed.metadata()).as_deref(), Some("user/bob"));
    assert_eq!(allowed.into_inner().principal, "user/bob");

    let refused = iam_client
        .get_caller_identity(call(&[
            b"table:GetItem table/orders",
            b"table:PutItem table/orders",
        ]))
        .await;
    let status = refused.as_ref().expect_err("PutItem is not allowed");
    assert_eq!(principal(status.metadata()).as_deref(), Some("user/bob"));
    check_status(
        refused,
        Code::PermissionDenied,
        "AccessDeniedException",
        "User: user/bob is not authorized to perform: table:PutItem on resource: table/orders",
    );
    check_status(
        iam_client
            .get_caller_identity(call(&[b"table:GetItem table/\xe9"]))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "is not \"<action> <resource>\"",
    );

    // A forwarded credential that cannot be read is refused, never
    // dropped (which would decide the call for the service itself); so is
    // one sent twice, and an own credential sent twice.
    let bobs = format!("Bearer {bob}");
    let own = format!("Bearer {service}");
    let cases: [(&str, Vec<&[u8]>, &str); 4] = [
        (
            "x-on-behalf-of",
            vec![b"Bearer \xe9\xe9"],
            "malformed caller's credential (forwarded in x-on-behalf-of)",
        ),
        (
            "x-on-behalf-of",
            vec![b""],
            "malformed caller's credential (forwarded in x-on-behalf-of)",
        ),
        (
            "x-on-behalf-of",
            vec![bobs.as_bytes(), bobs.as_bytes()],
            "malformed caller's credential (forwarded in x-on-behalf-of)",
        ),
        (
            "authorization",
            vec![own.as_bytes()],
            "malformed service's own credential (authorization)",
        ),
    ];
    for (header, values, message) in cases {
        let mut request = authed(&service, iam::GetCallerIdentityRequest {});
        let meta = request.metadata_mut();
        if header == "x-on-behalf-of" {
            for value in &values {
                meta.append(header, MetadataValue::try_from(*value).unwrap());
            }
        } else {
            meta.insert("x-on-behalf-of", bobs.parse().unwrap());
            meta.append(header, MetadataValue::try_from(values[0]).unwrap());
        }
        let answer = iam_client.get_caller_identity(request).await;
        if let Ok(answer) = &answer {
            panic!(
                "{header} {values:?}: answered for {:?}",
                answer.get_ref().principal
            );
        }
        check_status(
            answer,
            Code::Unauthenticated,
            "IncompleteSignatureException",
            message,
        );
    }

    // An oversized forwarded call, refused before any handler, is answered
    // like any other: with the principal it was decided for.
    let mut huge = authed(
        &service,
        pb::EncryptRequest {
            key_id: "alias/any".into(),
            plaintext: vec![0; 300 * 1024],
            ..Default::default()
        },
    );
    huge.metadata_mut()
        .insert("x-on-behalf-of", format!("Bearer {bob}").parse().unwrap());
    let refused = KeyManagementServiceClient::new(channel(&kms).await)
        .encrypt(huge)
        .await;
    let status = refused.as_ref().expect_err("too large");
    assert_eq!(principal(status.metadata()).as_deref(), Some("user/bob"));
    check_status(
        refused,
        Code::ResourceExhausted,
        "LimitExceededException",
        "--max-message-bytes",
    );

    // A direct call names no principal in metadata.
    let direct = iam_client
        .get_caller_identity(authed(&bob, iam::GetCallerIdentityRequest {}))
        .await
        .unwrap();
    assert_eq!(principal(direct.metadata()), None);
    kms.server.stop().await.unwrap();
}

/// A client that cancels many calls at once (table-service dropping a
/// page's unwraps when its caller goes away) keeps its connection: the
/// server's guard against reset floods allows as many pending resets as a
/// connection may have streams, so other calls on that connection go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_cancelled_calls_does_not_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let client = KeyManagementServiceClient::new(ch.clone());
    for _ in 0..10 {
        let mut calls = Vec::new();
        for _ in 0..500 {
            let mut client = client.clone();
            let admin = kms.admin.clone();
            calls.push(tokio::spawn(async move {
                client
                    .generate_random(authed(
                        &admin,
                        pb::GenerateRandomRequest {
                            number_of_bytes: Some(8),
                        },
                    ))
                    .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        for call in calls {
            call.abort();
        }
    }
    let mut client = client.clone();
    for _ in 0..20 {
        client
            .generate_random(authed(
                &kms.admin,
                pb::GenerateRandomRequest {
                    number_of_bytes: Some(8),
                },
            ))
            .await
            .expect("the connection still serves");
    }
    kms.server.stop().await.unwrap();
}

/// Every answer carries the call's request id in `x-request-id`: the
/// caller's own (kept as sent), or the one kms-service made up, which is
/// the id its audit record has; errors carry it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carry_the_request_id_the_audit_log_knows() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let id_of = |meta: &tonic::metadata::MetadataMap| {
        meta.get("x-request-id")
            .expect("x-request-id in the answer")
            .to_str()
            .unwrap()
            .to_string()
    };
    let mut mine = authed(
        &kms.admin,
        pb::GenerateRandomRequest {
            number_of_bytes: Some(8),
        },
    );
    mine.metadata_mut()
        .insert("x-request-id", "client-chosen-7".parse().unwrap());
    let answer = client.generate_random(mine).await.unwrap();
    assert_eq!(id_of(answer.metadata()), "client-chosen-7");

    let answer = client
        .generate_random(authed(
            &kms.admin,
            pb::GenerateRandomRequest {
                number_of_bytes: Some(8),
            },
        ))
        .await
        .unwrap();
    let made_up = id_of(answer.metadata());
    let refused = client
        .generate_random(authed(
            "",
            pb::GenerateRandomRequest {
                number_of_bytes: Some(8),
            },
        ))
        .await
        .unwrap_err();
    let refused_id = id_of(refused.metadata());
    assert_ne!(made_up, refused_id);

    let audit: Vec<serde_json::Value> =
        std::fs::read_to_string(dir.path().join("audit").join("audit.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let record = |id: &str| {
        audit
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("no audit record of request {id}"))
    };
    assert_eq!(record("client-chosen-7")["event_name"], "GenerateRandom");
    assert_eq!(record(&made_up)["decision"], "Allow");
    assert_eq!(record(&refused_id)["decision"], "Unauthenticated");
    kms.server.stop().await.unwrap();
}

/// Pages that could not be sent: 100 grants with 8 KiB of constraints each
/// are about 850 KiB, over the 256 KiB an answer may take. ListGrants ends
/// a page before that, ListGrants and ListAliases take at most 100 items a
/// page (as in AWS) and the other list calls 1000.
#[tokio::test]
async fn list_pages_fit_in_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let key = new_key(&mut client, &kms.admin).await;
    let mut made = std::collections::BTreeSet::new();
    for g in 0..100 {
        // 64 pairs of 60 + 60 bytes: just under the 8 KiB a grant may hold.
        let subset = (0..64)
            .map(|i| (format!("{g:03}-{i:02}-{}", "k".repeat(53)), "v".repeat(60)))
            .collect();
        let grant = client
            .create_grant(authed(
                &kms.admin,
                pb::CreateGrantRequest {
                    key_id: key.clone(),
                    grantee_principal: "user/reader".into(),
                    operations: vec![pb::GrantOperation::Decrypt.into()],
                    constraints: Some(pb::GrantConstraints {
                        encryption_context_subset: subset,
                        ..Default::default()
                    }),
                    name: format!("grant-{g:03}-{}", "n".repeat(200)),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        made.insert(grant.grant_id);
    }
    let mut listed = std::collections::BTreeSet::new();
    let mut marker = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_grants(authed(
                &kms.admin,
                pb::ListGrantsRequest {
                    key_id: key.clone(),
                    marker: marker.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("a page of ListGrants is sent")
            .into_inner();
        pages += 1;
        assert!(!page.grants.is_empty());
        for grant in page.grants {
            assert!(listed.insert(grant.grant_id), "a grant listed twice");
        }
        if !page.truncated {
            break;
        }
        marker = page.next_marker;
    }
    assert_eq!(listed, made);
    assert!(pages >= 4, "{pages} pages");

    for limit in [101, 1000] {
        check_status(
            client
                .list_grants(authed(
                    &kms.admin,
                    pb::ListGrantsRequest {
                        key_id: key.clone(),
                        limit,
                        ..Default::default()
                    },
                ))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            "use 1–100",
        );
        check_status(
            client
                .list_aliases(authed(
                    &kms.admin,
                    pb::ListAliasesRequest {
                        limit,
                        ..Default::default()
                    },
                ))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            "use 1–100",
        );
    }
    client
        .list_keys(authed(
            &kms.admin,
            pb::ListKeysRequest {
                limit: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    check_status(
        client
            .list_keys(authed(
                &kms.admin,
                pb::ListKeysRequest {
                    limit: 1001,
                    ..Default::default()
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "use 1–1000",
    );
}

/// Every item of a listing, following `next_marker` page by page from the
/// first: `page(marker)` gives one page's item ids and its next marker
/// (`None` on the last). Fails if an item comes twice. Returns the items
/// and how many pages held them.
async fn walk_pages<F, Fut>(mut page: F) -> (std::collections::BTreeSet<String>, usize)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<String>, Option<String>)>,
{
    let (mut listed, mut marker, mut pages) = (std::collections::BTreeSet::new(), String::new(), 0);
    loop {
        let (items, next) = page(marker).await;
        pages += 1;
        for item in items {
            assert!(listed.insert(item.clone()), "{item} listed twice");
        }
        match next {
            Some(next) => marker = next,
            None => return (listed, pages),
        }
    }
}

/// Under a small `--max-message-bytes` (which also caps answers), every
/// list call ends its pages before they would outgrow an answer, instead
/// of failing: 400 keys, 200 users and 20 grants of 3.5 KiB, each listed
/// in full through markers at the largest `limit`.
#[tokio::test]
async fn list_pages_fit_a_small_message_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    config.max_message_bytes = 16 * 1024;
    let server = RunningServer::start(config).await.unwrap();
    let admin = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let kms = Kms { server, admin };
    let ch = channel(&kms).await;
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let mut iam_client = IdentityServiceClient::new(ch);
    let next = |truncated: bool, marker: String| truncated.then_some(marker);

    let mut keys = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let key = client
            .create_key(authed(&kms.admin, pb::CreateKeyRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap()
            .key_id;
        keys.insert(key);
    }
    let (listed, pages) = walk_pages(|marker| {
        let (mut client, admin) = (client.clone(), kms.admin.clone());
        async move {
            let page = client
                .list_keys(authed(
                    &admin,
                    pb::ListKeysRequest {
                        limit: 1000,
                        marker,
                    },
                ))
                .await
                .expect("a page of ListKeys is sent")
                .into_inner();
            let items = page.keys.into_iter().map(|k| k.key_id).collect();
            (items, next(page.truncated, page.next_marker))
        }
    })
    .await;
    assert_eq!(listed, keys);
    assert!(pages >= 2, "{pages} pages");

    let mut users = std::collections::BTreeSet::from(["user/admin".to_string()]);
    for i in 0..200 {
        let name = format!("user-{i:03}-{}", "u".repeat(50));
        iam_client
            .create_user(authed(
                &kms.admin,
                iam::CreateUserRequest {
                    user_name: name.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
        users.insert(format!("user/{name}"));
    }
    let (listed, pages) = walk_pages(|marker| {
        let (mut iam_client, admin) = (iam_client.clone(), kms.admin.clone());
        async move {
            let page = iam_client
                .list_users(authed(
                    &admin,
                    iam::ListUsersRequest {
                        limit: 1000,
                        marker,
                    },
                ))
                .await
                .expect("a page of ListUsers is sent")
                .into_inner();
            let items = page.users.into_iter().map(|u| u.principal).collect();
            (items, next(page.truncated, page.next_marker))
        }
    })
    .await;
    assert_eq!(listed, users);
    assert!(pages >= 2, "{pages} pages");

    let key = keys.first().unwrap().clone();
    let mut made = std::collections::BTreeSet::new();
    for g in 0..20 {
        // 28 pairs of 60 + 60 bytes: about 3.5 KiB.
        let subset = (0..28)
            .map(|i| (format!("{g:03}-{i:02}-{}", "k".repeat(53)), "v".repeat(60)))
            .collect();
        let grant = client
            .create_grant(authed(
                &kms.admin,
                pb::CreateGrantRequest {
                    key_id: key.clone(),
                    grantee_principal: "user/admin".into(),
                    operations: vec![pb::GrantOperation::Decrypt.into()],
                    constraints: Some(pb::GrantConstraints {
                        encryption_context_subset: subset,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        made.insert(grant.grant_id);
    }
    let (listed, pages) = walk_pages(|marker| {
        let (mut client, admin, key) = (client.clone(), kms.admin.clone(), key.clone());
        async move {
            let request = pb::ListGrantsRequest {
                key_id: key,
                limit: 100,
                marker,
                ..Default::default()
            };
            let page = client
                .list_grants(authed(&admin, request))
                .await
                .expect("a page of ListGrants is sent")
                .into_inner();
            let items = page.grants.into_iter().map(|g| g.grant_id).collect();
            (items, next(page.truncated, page.next_marker))
        }
    })
    .await;
    assert_eq!(listed, made);
    assert!(pages >= 2, "{pages} pages");
    kms.server.stop().await.unwrap();
}

/// An answer that would outgrow `--max-message-bytes` (which also caps
/// answers) is refused as `LimitExceededException` naming the setting, not
/// failed in the transport without an ErrorInfo: here a 30 KiB key policy,
/// stored under the default limit, read back under 16 KiB.
#[tokio::test]
async fn an_answer_over_the_message_limit_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let key = new_key(&mut client, &kms.admin).await;
    let padding: Vec<String> = (0..95)
        .map(|i| {
            format!(
                r#"{{"Sid":"Pad{i:03}","Effect":"Deny","Principal":{{"AWS":"user/nobody"}},"Action":"kms:Decrypt","Resource":"*","Condition":{{"StringEquals":{{"kms:EncryptionContext:pad":"{}"}}}}}}"#,
                "p".repeat(150)
            )
        })
        .collect();
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"Admin","Effect":"Allow","Principal":{{"AWS":"user/admin"}},"Action":"kms:*","Resource":"*"}},{}]}}"#,
        padding.join(",")
    );
    assert!(policy.len() > 24 * 1024, "{} bytes", policy.len());
    client
        .put_key_policy(authed(
            &kms.admin,
            pb::PutKeyPolicyRequest {
                key_id: key.clone(),
                policy_name: "default".into(),
                policy: policy.clone(),
            },
        ))
        .await
        .unwrap();
    kms.server.stop().await.unwrap();

    let mut config = ServeConfig::for_data_dir(dir.path().to_path_buf());
    config.max_message_bytes = 16 * 1024;
    let server = RunningServer::start(config).await.unwrap();
    let kms = Kms {
        server,
        admin: kms.admin,
    };
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let get = pb::GetKeyPolicyRequest {
        key_id: key.clone(),
        policy_name: String::new(),
    };
    check_status(
        client.get_key_policy(authed(&kms.admin, get)).await,
        Code::ResourceExhausted,
        "LimitExceededException",
        "more than the 16384 kms-service sends (--max-message-bytes / KMS_MAX_MESSAGE_BYTES): raise that setting",
    );
    // Smaller answers about the same key go on.
    client
        .describe_key(authed(
            &kms.admin,
            pb::DescribeKeyRequest {
                key_id: key,
                grant_tokens: vec![],
            },
        ))
        .await
        .expect("a small answer is sent");
    kms.server.stop().await.unwrap();
}

/// An error that quotes a long request field reaches the caller as that
/// error: its message is cut to 1 KiB, since a status message travels
/// twice in the trailers and a client past its trailer bound (hyper's:
/// 16 KiB) fails the call, or the whole connection, with a transport error.
#[tokio::test]
async fn an_error_quoting_a_long_field_reaches_the_caller_intact() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let channel = channel(&kms).await;
    let mut iam_client = IdentityServiceClient::new(channel.clone());
    let quotes = "\"".repeat(200 * 1024);
    let refused = iam_client
        .get_user(authed(
            &kms.admin,
            iam::GetUserRequest {
                user_name: quotes.clone(),
            },
        ))
        .await
        .expect_err("not a user name");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let info = refused.get_details_error_info().expect("ErrorInfo detail");
    assert_eq!(info.reason, "ValidationException");
    assert!(refused.message().starts_with("user name \"\\\"\\\""));
    assert!(
        refused.message().ends_with(" bytes)") && refused.message().len() <= 1100,
        "{} bytes: {:.100}",
        refused.message().len(),
        refused.message()
    );
    // The connection is still good.
    let mut client = KeyManagementServiceClient::new(channel);
    new_key(&mut client, &kms.admin).await;
}
