//! Round trips over gRPC (a real kms-service on an ephemeral port, the
//! generated tonic clients) of the kms.v1 and iam.v1 calls that the other
//! tests do not make over the wire: each call is followed by the reads that
//! show what it did, so that a mix-up in the gRPC mapping (a field of the
//! request passed as another, an answer's field left unset or set from the
//! wrong value, an enum mapped to its neighbour) fails here. Also server
//! reflection's list of services.
//!
//! kms-service runs on a manual clock, so dates in answers are checked to
//! the second and automatic rotation happens when a test moves the clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kms_service::clock::{Clock, ManualClock};
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

#[path = "support/reflection.rs"]
mod reflection;

const DAY: i64 = 86_400;

struct Kms {
    server: RunningServer,
    admin: String,
    clock: Arc<ManualClock>,
    /// The clock's time when the server started.
    t0: i64,
}

async fn start(dir: &std::path::Path) -> Kms {
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let clock = Arc::new(ManualClock::new(t0));
    let server = RunningServer::start_with_clock(
        ServeConfig::for_data_dir(dir.to_path_buf()),
        clock.clone(),
    )
    .await
    .expect("kms-service starts");
    let admin = std::fs::read_to_string(dir.join("admin.token"))
        .expect("admin token file")
        .trim()
        .to_string();
    Kms {
        server,
        admin,
        clock,
        t0,
    }
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

/// Creates a key of `spec` as `admin`; returns its id.
async fn new_key_of(
    client: &mut KeyManagementServiceClient<Channel>,
    admin: &str,
    spec: pb::KeySpec,
) -> String {
    client
        .create_key(authed(
            admin,
            pb::CreateKeyRequest {
                key_spec: spec.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id
}

/// DescribeKey as `admin`.
async fn describe(
    client: &mut KeyManagementServiceClient<Channel>,
    admin: &str,
    key_id: &str,
) -> Result<pb::KeyMetadata, tonic::Status> {
    client
        .describe_key(authed(
            admin,
            pb::DescribeKeyRequest {
                key_id: key_id.into(),
                grant_tokens: vec![],
            },
        ))
        .await
        .map(|r| r.into_inner().key_metadata.expect("key_metadata is set"))
}

/// Encrypt without an encryption context.
async fn encrypt(
    client: &mut KeyManagementServiceClient<Channel>,
    token: &str,
    key_id: &str,
    plaintext: &[u8],
) -> Result<pb::EncryptResponse, tonic::Status> {
    client
        .encrypt(authed(
            token,
            pb::EncryptRequest {
                key_id: key_id.into(),
                plaintext: plaintext.to_vec(),
                ..Default::default()
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Decrypt with `context`, optionally naming the key.
async fn decrypt(
    client: &mut KeyManagementServiceClient<Channel>,
    token: &str,
    blob: &[u8],
    context: &HashMap<String, String>,
    key_id: &str,
) -> Result<pb::DecryptResponse, tonic::Status> {
    client
        .decrypt(authed(
            token,
            pb::DecryptRequest {
                ciphertext_blob: blob.to_vec(),
                encryption_context: context.clone(),
                grant_tokens: vec![],
                key_id: key_id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Creates a user with no policies; returns a token of it.
async fn new_user(
    iam_client: &mut IdentityServiceClient<Channel>,
    admin: &str,
    name: &str,
) -> String {
    iam_client
        .create_user(authed(
            admin,
            iam::CreateUserRequest {
                user_name: name.into(),
                kind: 0,
            },
        ))
        .await
        .unwrap();
    iam_client
        .create_access_token(authed(
            admin,
            iam::CreateAccessTokenRequest {
                user_name: name.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
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
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "kms.lockbox.dev");
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

fn tag(key: &str, value: &str) -> pb::Tag {
    pb::Tag {
        tag_key: key.into(),
        tag_value: value.into(),
    }
}

/// The seconds of an answer's optional timestamp (prost-types, which names
/// its type, is not a dependency of this crate).
macro_rules! seconds {
    ($timestamp:expr) => {
        $timestamp.map(|t| t.seconds)
    };
}

// ---------------------------------------------------------------------------

/// UpdateKeyDescription replaces (and clears) the description DescribeKey
/// shows; CancelKeyDeletion answers the key's id (whatever name it was
/// given) and leaves the key DISABLED with no deletion date, until
/// EnableKey; a cancelled key is not destroyed when its window would have
/// passed.
#[tokio::test]
async fn key_description_and_cancelled_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let admin = kms.admin.clone();
    let created = client
        .create_key(authed(
            &admin,
            pb::CreateKeyRequest {
                description: "first words".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap();
    let key = created.key_id.clone();
    assert_eq!(created.description, "first words");

    // By `key/<id>`: the key's description changes, nothing else.
    let answer = client
        .update_key_description(authed(
            &admin,
            pb::UpdateKeyDescriptionRequest {
                key_id: format!("key/{key}"),
                description: "second words".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::UpdateKeyDescriptionResponse {});
    let meta = describe(&mut client, &admin, &key).await.unwrap();
    assert_eq!(
        meta,
        pb::KeyMetadata {
            description: "second words".into(),
            ..created.clone()
        }
    );
    // Empty clears it.
    client
        .update_key_description(authed(
            &admin,
            pb::UpdateKeyDescriptionRequest {
                key_id: key.clone(),
                description: String::new(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        describe(&mut client, &admin, &key)
            .await
            .unwrap()
            .description,
        ""
    );
    client
        .update_key_description(authed(
            &admin,
            pb::UpdateKeyDescriptionRequest {
                key_id: key.clone(),
                description: "kept through the deletion".into(),
            },
        ))
        .await
        .unwrap();
    check_status(
        client
            .update_key_description(authed(
                &admin,
                pb::UpdateKeyDescriptionRequest {
                    key_id: key.clone(),
                    description: "d".repeat(8193),
                },
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "8193 characters",
    );
    check_status(
        client
            .update_key_description(authed(
                &admin,
                pb::UpdateKeyDescriptionRequest {
                    key_id: "alias/missing".into(),
                    description: "x".into(),
                },
            ))
            .await,
        Code::NotFound,
        "NotFoundException",
        "alias/missing",
    );

    // Through an alias: CancelKeyDeletion answers the key's own id.
    client
        .create_alias(authed(
            &admin,
            pb::CreateAliasRequest {
                alias_name: "alias/doomed".into(),
                target_key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    let scheduled = client
        .schedule_key_deletion(authed(
            &admin,
            pb::ScheduleKeyDeletionRequest {
                key_id: key.clone(),
                pending_window_in_days: Some(7),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            scheduled.key_id.as_str(),
            seconds!(scheduled.deletion_date),
            scheduled.key_state,
            scheduled.pending_window_in_days
        ),
        (
            key.as_str(),
            Some(kms.t0 + 7 * DAY),
            i32::from(pb::KeyState::PendingDeletion),
            7
        )
    );
    let pending = describe(&mut client, &admin, &key).await.unwrap();
    assert_eq!(
        (
            pending.key_state,
            pending.enabled,
            seconds!(pending.deletion_date),
            pending.pending_deletion_window_in_days
        ),
        (
            i32::from(pb::KeyState::PendingDeletion),
            false,
            Some(kms.t0 + 7 * DAY),
            7
        )
    );
    check_status(
        client
            .update_key_description(authed(
                &admin,
                pb::UpdateKeyDescriptionRequest {
                    key_id: key.clone(),
                    description: "too late".into(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "pending deletion",
    );
    let cancelled = client
        .cancel_key_deletion(authed(
            &admin,
            pb::CancelKeyDeletionRequest {
                key_id: "alias/doomed".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled,
        pb::CancelKeyDeletionResponse {
            key_id: key.clone()
        }
    );
    let meta = describe(&mut client, &admin, &key).await.unwrap();
    assert_eq!(
        meta,
        pb::KeyMetadata {
            description: "kept through the deletion".into(),
            enabled: false,
            key_state: pb::KeyState::Disabled.into(),
            deletion_date: None,
            pending_deletion_window_in_days: 0,
            ..created.clone()
        }
    );
    check_status(
        encrypt(&mut client, &admin, &key, b"x").await,
        Code::FailedPrecondition,
        "DisabledException",
        &key,
    );
    check_status(
        client
            .cancel_key_deletion(authed(
                &admin,
                pb::CancelKeyDeletionRequest {
                    key_id: key.clone(),
                },
            ))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "not pending deletion",
    );
    check_status(
        client
            .cancel_key_deletion(authed(
                &admin,
                pb::CancelKeyDeletionRequest {
                    key_id: "alias/missing".into(),
                },
            ))
            .await,
        Code::NotFound,
        "NotFoundException",
        "alias/missing",
    );

    // The window passes: the cancelled key stays.
    kms.clock.advance(8 * DAY);
    let report = kms.server.kms.run_maintenance().await.unwrap();
    assert!(!report.destroyed.contains(&key), "{report:?}");
    client
        .enable_key(authed(
            &admin,
            pb::EnableKeyRequest {
                key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        describe(&mut client, &admin, &key).await.unwrap(),
        pb::KeyMetadata {
            description: "kept through the deletion".into(),
            ..created
        }
    );
    let sealed = encrypt(&mut client, &admin, "alias/doomed", b"back")
        .await
        .unwrap();
    assert_eq!(
        (sealed.key_id.as_str(), sealed.key_version),
        (key.as_str(), 1)
    );
    kms.server.stop().await.unwrap();
}

/// UpdateAlias moves an alias (Encrypt and Decrypt through it then use the
/// new key; ListAliases shows it under the new key, with its creation
/// date); DeleteAlias makes it NOT_FOUND and leaves the key. TagResource
/// adds and replaces tags, UntagResource removes them (ignoring absent
/// ones), and ListResourceTags lists exactly the tags, in key order, page by
/// page.
#[tokio::test]
async fn aliases_move_and_go_and_tags_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let admin = kms.admin.clone();
    let no_context = HashMap::new();
    let a = new_key(&mut client, &admin).await;
    let b = new_key(&mut client, &admin).await;
    let hmac = new_key_of(&mut client, &admin, pb::KeySpec::Hmac256).await;
    client
        .create_alias(authed(
            &admin,
            pb::CreateAliasRequest {
                alias_name: "alias/app".into(),
                target_key_id: a.clone(),
            },
        ))
        .await
        .unwrap();
    let under_a = encrypt(&mut client, &admin, "alias/app", b"old")
        .await
        .unwrap();
    assert_eq!(under_a.key_id, a);
    kms.clock.advance(60);

    let shared = client.clone();
    let aliases_of = |key: String| {
        let (mut client, admin) = (shared.clone(), admin.clone());
        async move {
            let page = client
                .list_aliases(authed(
                    &admin,
                    pb::ListAliasesRequest {
                        key_id: key,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(!page.truncated && page.next_marker.is_empty(), "{page:?}");
            page.aliases
                .into_iter()
                .map(|e| (e.alias_name, e.target_key_id, seconds!(e.creation_date)))
                .collect::<Vec<_>>()
        }
    };
    // The alias, pointing at `key`, created when the test began.
    let entry = |key: &str| vec![("alias/app".to_string(), key.to_string(), Some(kms.t0))];
    assert_eq!(aliases_of(a.clone()).await, entry(&a));

    let moved = client
        .update_alias(authed(
            &admin,
            pb::UpdateAliasRequest {
                alias_name: "alias/app".into(),
                target_key_id: b.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved, pb::UpdateAliasResponse {});
    assert_eq!(aliases_of(a.clone()).await, vec![]);
    // The alias keeps its creation date.
    assert_eq!(aliases_of(b.clone()).await, entry(&b));
    assert_eq!(
        describe(&mut client, &admin, "alias/app")
            .await
            .unwrap()
            .key_id,
        b
    );
    let under_b = encrypt(&mut client, &admin, "alias/app", b"new")
        .await
        .unwrap();
    assert_eq!(under_b.key_id, b);
    let opened = decrypt(
        &mut client,
        &admin,
        &under_b.ciphertext_blob,
        &no_context,
        "alias/app",
    )
    .await
    .unwrap();
    assert_eq!(
        (opened.key_id.as_str(), opened.plaintext.as_slice()),
        (b.as_str(), &b"new"[..])
    );
    // A ciphertext of the old key still decrypts, but no longer through the
    // alias.
    let opened = decrypt(
        &mut client,
        &admin,
        &under_a.ciphertext_blob,
        &no_context,
        "",
    )
    .await
    .unwrap();
    assert_eq!(
        (opened.key_id.as_str(), opened.plaintext.as_slice()),
        (a.as_str(), &b"old"[..])
    );
    check_status(
        decrypt(
            &mut client,
            &admin,
            &under_a.ciphertext_blob,
            &no_context,
            "alias/app",
        )
        .await,
        Code::InvalidArgument,
        "IncorrectKeyException",
        "",
    );
    // Back to the first key, named `key/<id>`.
    client
        .update_alias(authed(
            &admin,
            pb::UpdateAliasRequest {
                alias_name: "alias/app".into(),
                target_key_id: format!("key/{a}"),
            },
        ))
        .await
        .unwrap();
    assert_eq!(aliases_of(b.clone()).await, vec![]);
    assert_eq!(aliases_of(a.clone()).await, entry(&a));
    assert_eq!(
        encrypt(&mut client, &admin, "alias/app", b"again")
            .await
            .unwrap()
            .key_id,
        a
    );
    let update = |alias: &str, target: &str| {
        authed(
            &admin,
            pb::UpdateAliasRequest {
                alias_name: alias.into(),
                target_key_id: target.into(),
            },
        )
    };
    check_status(
        client.update_alias(update("alias/none", &b)).await,
        Code::NotFound,
        "NotFoundException",
        "alias/none",
    );
    check_status(
        client.update_alias(update("alias/app", &hmac)).await,
        Code::InvalidArgument,
        "ValidationException",
        "same usage",
    );
    check_status(
        client.update_alias(update("alias/app", "alias/app")).await,
        Code::InvalidArgument,
        "ValidationException",
        "not an alias",
    );
    assert_eq!(aliases_of(a.clone()).await, entry(&a));

    let deleted = client
        .delete_alias(authed(
            &admin,
            pb::DeleteAliasRequest {
                alias_name: "alias/app".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted, pb::DeleteAliasResponse {});
    check_status(
        describe(&mut client, &admin, "alias/app").await,
        Code::NotFound,
        "NotFoundException",
        "alias/app",
    );
    check_status(
        encrypt(&mut client, &admin, "alias/app", b"x").await,
        Code::NotFound,
        "NotFoundException",
        "alias/app",
    );
    assert_eq!(aliases_of(a.clone()).await, vec![]);
    let all = client
        .list_aliases(authed(&admin, pb::ListAliasesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .aliases;
    assert!(all.iter().all(|e| e.alias_name != "alias/app"), "{all:?}");
    let key_a = describe(&mut client, &admin, &a).await.unwrap();
    assert_eq!(key_a.key_state, i32::from(pb::KeyState::Enabled));
    check_status(
        client
            .delete_alias(authed(
                &admin,
                pb::DeleteAliasRequest {
                    alias_name: "alias/app".into(),
                },
            ))
            .await,
        Code::NotFound,
        "NotFoundException",
        "alias/app",
    );

    // Tags.
    let shared = client.clone();
    let tags_of = |key: String, limit: u32, marker: &str| {
        let (mut client, admin, marker) = (shared.clone(), admin.clone(), marker.to_string());
        async move {
            client
                .list_resource_tags(authed(
                    &admin,
                    pb::ListResourceTagsRequest {
                        key_id: key,
                        limit,
                        marker,
                    },
                ))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let whole = |tags: Vec<pb::Tag>| pb::ListResourceTagsResponse {
        tags,
        next_marker: String::new(),
        truncated: false,
    };
    assert_eq!(tags_of(a.clone(), 0, "").await, whole(vec![]));
    let tag_resource = |key: &str, tags: Vec<pb::Tag>| {
        authed(
            &admin,
            pb::TagResourceRequest {
                key_id: key.into(),
                tags,
            },
        )
    };
    let untag_resource = |key: &str, tag_keys: &[&str]| {
        authed(
            &admin,
            pb::UntagResourceRequest {
                key_id: key.into(),
                tag_keys: tag_keys.iter().map(|k| k.to_string()).collect(),
            },
        )
    };
    let answer = client
        .tag_resource(tag_resource(
            &a,
            vec![tag("team", "kms"), tag("env", "prod")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::TagResourceResponse {});
    assert_eq!(
        tags_of(a.clone(), 0, "").await,
        whole(vec![tag("env", "prod"), tag("team", "kms")])
    );
    // Another key's tags are its own.
    assert_eq!(tags_of(b.clone(), 0, "").await, whole(vec![]));
    // A tag key it has already takes the new value; through `key/<id>`.
    client
        .tag_resource(tag_resource(
            &format!("key/{a}"),
            vec![tag("env", "dev"), tag("zone", "")],
        ))
        .await
        .unwrap();
    assert_eq!(
        tags_of(a.clone(), 0, "").await,
        whole(vec![tag("env", "dev"), tag("team", "kms"), tag("zone", "")])
    );
    assert_eq!(
        tags_of(a.clone(), 2, "").await,
        pb::ListResourceTagsResponse {
            tags: vec![tag("env", "dev"), tag("team", "kms")],
            next_marker: "team".into(),
            truncated: true,
        }
    );
    assert_eq!(
        tags_of(a.clone(), 2, "team").await,
        whole(vec![tag("zone", "")])
    );
    let answer = client
        .untag_resource(untag_resource(&a, &["team", "absent"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::UntagResourceResponse {});
    assert_eq!(
        tags_of(a.clone(), 0, "").await,
        whole(vec![tag("env", "dev"), tag("zone", "")])
    );
    client
        .untag_resource(untag_resource(&a, &["zone", "env"]))
        .await
        .unwrap();
    assert_eq!(tags_of(a.clone(), 0, "").await, whole(vec![]));
    // Tags given to CreateKey are listed the same way.
    let tagged = client
        .create_key(authed(
            &admin,
            pb::CreateKeyRequest {
                tags: vec![tag("b-key", "b-value"), tag("a-key", "a-value")],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    assert_eq!(
        tags_of(tagged.clone(), 0, "").await,
        whole(vec![tag("a-key", "a-value"), tag("b-key", "b-value")])
    );
    check_status(
        client.tag_resource(tag_resource(&a, vec![])).await,
        Code::InvalidArgument,
        "ValidationException",
        "tags must not be empty",
    );
    check_status(
        client
            .tag_resource(tag_resource(&a, vec![tag("aws:owner", "me")]))
            .await,
        Code::InvalidArgument,
        "TagException",
        "aws:",
    );
    check_status(
        client
            .tag_resource(tag_resource(&a, vec![tag(&"k".repeat(129), "v")]))
            .await,
        Code::InvalidArgument,
        "TagException",
        "1–128",
    );
    check_status(
        client.untag_resource(untag_resource(&a, &[])).await,
        Code::InvalidArgument,
        "ValidationException",
        "tag_keys must not be empty",
    );
    check_status(
        client
            .untag_resource(untag_resource(&a, &["aws:owner"]))
            .await,
        Code::InvalidArgument,
        "TagException",
        "aws:",
    );
    assert_eq!(tags_of(a.clone(), 0, "").await, whole(vec![]));
    client
        .schedule_key_deletion(authed(
            &admin,
            pb::ScheduleKeyDeletionRequest {
                key_id: tagged.clone(),
                pending_window_in_days: None,
            },
        ))
        .await
        .unwrap();
    check_status(
        client
            .tag_resource(tag_resource(&tagged, vec![tag("c-key", "c")]))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "pending deletion",
    );
    check_status(
        client
            .untag_resource(untag_resource(&tagged, &["a-key"]))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "pending deletion",
    );
    assert_eq!(
        tags_of(tagged, 0, "").await,
        whole(vec![tag("a-key", "a-value"), tag("b-key", "b-value")])
    );
    kms.server.stop().await.unwrap();
}

/// EnableKeyRotation with a period → GetKeyRotationStatus shows it on, with
/// that period and the next date; enabled again it keeps the schedule;
/// DisableKeyRotation turns it off (period 0, no date) and enabling it then
/// starts a new schedule. ListKeyRotations lists the versions made on
/// demand and automatically, oldest first, with their dates and types,
/// page by page.
#[tokio::test]
async fn rotation_settings_and_listed_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let mut client = KeyManagementServiceClient::new(channel(&kms).await);
    let admin = kms.admin.clone();
    let t0 = kms.t0;
    let key = new_key(&mut client, &admin).await;
    let shared = client.clone();
    let status = |key: &str| {
        let (mut client, admin, key) = (shared.clone(), admin.clone(), key.to_string());
        async move {
            let s = client
                .get_key_rotation_status(authed(
                    &admin,
                    pb::GetKeyRotationStatusRequest { key_id: key },
                ))
                .await
                .unwrap()
                .into_inner();
            (
                s.key_id,
                s.key_rotation_enabled,
                s.rotation_period_in_days,
                seconds!(s.next_rotation_date),
            )
        }
    };
    let enable = |key: &str, days: Option<u32>| {
        authed(
            &admin,
            pb::EnableKeyRotationRequest {
                key_id: key.into(),
                rotation_period_in_days: days,
            },
        )
    };
    let disable = |key: &str| authed(&admin, pb::DisableKeyRotationRequest { key_id: key.into() });
    let shared = client.clone();
    let rotations = |key: &str, limit: u32, marker: &str| {
        let (mut client, admin) = (shared.clone(), admin.clone());
        let request = pb::ListKeyRotationsRequest {
            key_id: key.into(),
            limit,
            marker: marker.into(),
        };
        async move {
            client
                .list_key_rotations(authed(&admin, request))
                .await
                .map(|r| {
                    let page = r.into_inner();
                    let listed: Vec<_> = page
                        .rotations
                        .into_iter()
                        .map(|r| {
                            let date = seconds!(r.rotation_date);
                            (r.key_id, r.key_version, date, r.rotation_type)
                        })
                        .collect();
                    (listed, page.next_marker, page.truncated)
                })
        }
    };
    assert_eq!(status(&key).await, (key.clone(), false, 0, None));
    assert_eq!(
        rotations(&key, 0, "").await.unwrap(),
        (vec![], String::new(), false)
    );

    let answer = client
        .enable_key_rotation(enable(&key, Some(180)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::EnableKeyRotationResponse {});
    // Through an alias, the answer names the key.
    client
        .create_alias(authed(
            &admin,
            pb::CreateAliasRequest {
                alias_name: "alias/rotating".into(),
                target_key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(
        status("alias/rotating").await,
        (key.clone(), true, 180, Some(t0 + 180 * DAY))
    );
    // On again, with the default period: the schedule still counts from
    // when rotation was turned on.
    kms.clock.advance(10 * DAY);
    client
        .enable_key_rotation(enable(&key, None))
        .await
        .unwrap();
    assert_eq!(
        status(&key).await,
        (key.clone(), true, 365, Some(t0 + 365 * DAY))
    );
    let answer = client
        .disable_key_rotation(disable(&key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::DisableKeyRotationResponse {});
    assert_eq!(status(&key).await, (key.clone(), false, 0, None));
    // Off then on: a new schedule from now.
    kms.clock.advance(DAY);
    client
        .enable_key_rotation(enable(&format!("key/{key}"), Some(90)))
        .await
        .unwrap();
    assert_eq!(
        status(&key).await,
        (key.clone(), true, 90, Some(t0 + 11 * DAY + 90 * DAY))
    );

    let rotated = client
        .rotate_key_on_demand(authed(
            &admin,
            pb::RotateKeyOnDemandRequest {
                key_id: key.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rotated.key_id.as_str(), rotated.key_version),
        (key.as_str(), 2)
    );
    // The rotation falls due: the next maintenance pass makes version 3,
    // and the next one is counted from it.
    kms.clock.advance(90 * DAY);
    let t_auto = kms.clock.now();
    kms.server.kms.run_maintenance().await.unwrap();
    assert_eq!(
        status(&key).await,
        (key.clone(), true, 90, Some(t_auto + 90 * DAY))
    );
    kms.clock.advance(5);
    let rotated = client
        .rotate_key_on_demand(authed(
            &admin,
            pb::RotateKeyOnDemandRequest {
                key_id: "alias/rotating".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rotated.key_id.as_str(), rotated.key_version),
        (key.as_str(), 4)
    );
    let rotation = |version: u32, at: i64, kind: pb::RotationType| {
        (key.clone(), version, Some(at), i32::from(kind))
    };
    let all = vec![
        rotation(2, t0 + 11 * DAY, pb::RotationType::OnDemand),
        rotation(3, t_auto, pb::RotationType::Automatic),
        rotation(4, t_auto + 5, pb::RotationType::OnDemand),
    ];
    assert_eq!(
        rotations(&key, 0, "").await.unwrap(),
        (all.clone(), String::new(), false)
    );
    assert_eq!(
        rotations("alias/rotating", 2, "").await.unwrap(),
        (all[..2].to_vec(), "3".to_string(), true)
    );
    assert_eq!(
        rotations(&key, 2, "3").await.unwrap(),
        (all[2..].to_vec(), String::new(), false)
    );
    assert_eq!(
        describe(&mut client, &admin, &key)
            .await
            .unwrap()
            .current_key_version,
        4
    );
    let sealed = encrypt(&mut client, &admin, &key, b"v4").await.unwrap();
    assert_eq!(sealed.key_version, 4);

    // Errors.
    for days in [89, 2561] {
        check_status(
            client.enable_key_rotation(enable(&key, Some(days))).await,
            Code::InvalidArgument,
            "ValidationException",
            &format!("rotation_period_in_days {days} is out of range"),
        );
    }
    assert_eq!(
        status(&key).await,
        (key.clone(), true, 90, Some(t_auto + 90 * DAY))
    );
    let hmac = new_key_of(&mut client, &admin, pb::KeySpec::Hmac256).await;
    check_status(
        client.enable_key_rotation(enable(&hmac, Some(90))).await,
        Code::FailedPrecondition,
        "UnsupportedOperationException",
        "SYMMETRIC_DEFAULT",
    );
    check_status(
        client.disable_key_rotation(disable(&hmac)).await,
        Code::FailedPrecondition,
        "UnsupportedOperationException",
        "SYMMETRIC_DEFAULT",
    );
    check_status(
        rotations(&hmac, 0, "").await,
        Code::FailedPrecondition,
        "UnsupportedOperationException",
        "SYMMETRIC_DEFAULT",
    );
    assert_eq!(status(&hmac).await, (hmac.clone(), false, 0, None));
    client
        .disable_key(authed(
            &admin,
            pb::DisableKeyRequest {
                key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    check_status(
        client.enable_key_rotation(enable(&key, Some(90))).await,
        Code::FailedPrecondition,
        "DisabledException",
        &key,
    );
    check_status(
        client.disable_key_rotation(disable(&key)).await,
        Code::FailedPrecondition,
        "DisabledException",
        &key,
    );
    let other = new_key(&mut client, &admin).await;
    client
        .schedule_key_deletion(authed(
            &admin,
            pb::ScheduleKeyDeletionRequest {
                key_id: other.clone(),
                pending_window_in_days: None,
            },
        ))
        .await
        .unwrap();
    check_status(
        client.enable_key_rotation(enable(&other, Some(90))).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
        "pending deletion",
    );
    check_status(
        rotations(&key, 0, "not-a-version").await,
        Code::InvalidArgument,
        "InvalidMarkerException",
        "",
    );
    kms.server.stop().await.unwrap();
}

/// RevokeGrant removes the grant (ListGrants no longer has it; other grants
/// stay) and its grantee loses what only the grant gave.
#[tokio::test]
async fn revoked_grants_are_gone_and_give_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let mut iam_client = IdentityServiceClient::new(ch);
    let admin = kms.admin.clone();
    let no_context = HashMap::new();
    let grantee = new_user(&mut iam_client, &admin, "grantee").await;
    let key = new_key(&mut client, &admin).await;
    let other_key = new_key(&mut client, &admin).await;
    check_status(
        encrypt(&mut client, &grantee, &key, b"x").await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/grantee is not authorized to perform: kms:Encrypt",
    );
    let grant = client
        .create_grant(authed(
            &admin,
            pb::CreateGrantRequest {
                key_id: key.clone(),
                grantee_principal: "user/grantee".into(),
                retiring_principal: "user/admin".into(),
                operations: vec![
                    pb::GrantOperation::Encrypt.into(),
                    pb::GrantOperation::Decrypt.into(),
                    pb::GrantOperation::DescribeKey.into(),
                ],
                name: "app-grant".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grant.grant_token, format!("gt-{}", grant.grant_id));
    let kept = client
        .create_grant(authed(
            &admin,
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
    let shared = client.clone();
    let grants_of = |key: &str, grant_id: &str| {
        let (mut client, admin) = (shared.clone(), admin.clone());
        let request = pb::ListGrantsRequest {
            key_id: key.into(),
            grant_id: grant_id.into(),
            ..Default::default()
        };
        async move {
            let page = client
                .list_grants(authed(&admin, request))
                .await
                .unwrap()
                .into_inner();
            assert!(!page.truncated, "{page:?}");
            let mut ids: Vec<String> = page.grants.iter().map(|g| g.grant_id.clone()).collect();
            ids.sort();
            (ids, page.grants)
        }
    };
    let (_, listed) = grants_of(&key, &grant.grant_id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let mut listed = listed.into_iter().next().unwrap();
    listed.operations.sort();
    let mut want_ops: Vec<i32> = [
        pb::GrantOperation::Encrypt,
        pb::GrantOperation::Decrypt,
        pb::GrantOperation::DescribeKey,
    ]
    .into_iter()
    .map(i32::from)
    .collect();
    want_ops.sort();
    assert_eq!(seconds!(listed.creation_date), Some(kms.t0));
    assert_eq!(
        listed,
        pb::GrantListEntry {
            key_id: key.clone(),
            grant_id: grant.grant_id.clone(),
            name: "app-grant".into(),
            creation_date: listed.creation_date,
            grantee_principal: "user/grantee".into(),
            retiring_principal: "user/admin".into(),
            issuing_principal: "user/admin".into(),
            operations: want_ops,
            constraints: None,
        }
    );
    let mut both = vec![grant.grant_id.clone(), kept.grant_id.clone()];
    both.sort();
    assert_eq!(grants_of(&key, "").await.0, both);

    // What the grant gives.
    let sealed = encrypt(&mut client, &grantee, &key, b"granted")
        .await
        .unwrap();
    assert_eq!(sealed.key_id, key);
    let opened = decrypt(
        &mut client,
        &grantee,
        &sealed.ciphertext_blob,
        &no_context,
        "",
    )
    .await
    .unwrap();
    assert_eq!(opened.plaintext, b"granted");
    describe(&mut client, &grantee, &key).await.unwrap();

    // Revoked through `key/<id>`.
    let answer = client
        .revoke_grant(authed(
            &admin,
            pb::RevokeGrantRequest {
                key_id: format!("key/{key}"),
                grant_id: grant.grant_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, pb::RevokeGrantResponse {});
    assert_eq!(grants_of(&key, "").await.0, vec![kept.grant_id.clone()]);
    assert_eq!(
        grants_of(&key, &grant.grant_id).await.0,
        Vec::<String>::new()
    );
    check_status(
        decrypt(
            &mut client,
            &grantee,
            &sealed.ciphertext_blob,
            &no_context,
            "",
        )
        .await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/grantee is not authorized to perform: kms:Decrypt",
    );
    check_status(
        encrypt(&mut client, &grantee, &key, b"x").await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/grantee is not authorized to perform: kms:Encrypt",
    );
    check_status(
        describe(&mut client, &grantee, &key).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/grantee is not authorized to perform: kms:DescribeKey",
    );
    // The other grant still works.
    let opened = decrypt(
        &mut client,
        &admin,
        &sealed.ciphertext_blob,
        &no_context,
        "",
    )
    .await
    .unwrap();
    assert_eq!(opened.plaintext, b"granted");

    let revoke = |key: &str, grant_id: &str| {
        authed(
            &admin,
            pb::RevokeGrantRequest {
                key_id: key.into(),
                grant_id: grant_id.into(),
            },
        )
    };
    check_status(
        client.revoke_grant(revoke(&key, &grant.grant_id)).await,
        Code::NotFound,
        "NotFoundException",
        &grant.grant_id,
    );
    // A grant of another key is not found on this one.
    check_status(
        client
            .revoke_grant(revoke(&other_key, &kept.grant_id))
            .await,
        Code::NotFound,
        "NotFoundException",
        &other_key,
    );
    check_status(
        client
            .revoke_grant(revoke("alias/missing", &kept.grant_id))
            .await,
        Code::NotFound,
        "NotFoundException",
        "alias/missing",
    );
    assert_eq!(grants_of(&key, "").await.0, vec![kept.grant_id.clone()]);
    kms.server.stop().await.unwrap();
}

/// GenerateDataKeyWithoutPlaintext: its ciphertext decrypts (with the same
/// context) to a data key of the length asked for, and its answer, read as
/// bytes, holds the ciphertext, the key id and the version and nothing of
/// the data key. VerifyMac: a MAC GenerateMac made is valid (with the key's
/// id and algorithm in the answer); any other is INVALID_ARGUMENT /
/// KMSInvalidMacException.
#[tokio::test]
async fn data_keys_without_plaintext_and_mac_checks() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let admin = kms.admin.clone();
    let key = new_key(&mut client, &admin).await;
    client
        .create_alias(authed(
            &admin,
            pb::CreateAliasRequest {
                alias_name: "alias/data".into(),
                target_key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    let context = HashMap::from([("purpose".to_string(), "test".to_string())]);
    let gdkwp = |key_id: &str, spec: pb::DataKeySpec, bytes: Option<u32>| {
        authed(
            &admin,
            pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key_id.into(),
                encryption_context: context.clone(),
                number_of_bytes: bytes,
                key_spec: spec.into(),
                grant_tokens: vec![],
            },
        )
    };
    let mut data_keys = Vec::new();
    for (spec, bytes, length) in [
        (pb::DataKeySpec::Aes256, None, 32),
        (pb::DataKeySpec::Aes128, None, 16),
        (pb::DataKeySpec::Unspecified, Some(7), 7),
    ] {
        // Named exhaustively: the answer has no plaintext field.
        let pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob,
            key_id,
            key_version,
        } = client
            .generate_data_key_without_plaintext(gdkwp("alias/data", spec, bytes))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((key_id.as_str(), key_version), (key.as_str(), 1));
        let opened = decrypt(&mut client, &admin, &ciphertext_blob, &context, &key)
            .await
            .unwrap();
        assert_eq!(
            (
                opened.key_id.as_str(),
                opened.key_version,
                opened.plaintext.len()
            ),
            (key.as_str(), 1, length),
            "{spec:?} {bytes:?}"
        );
        check_status(
            decrypt(&mut client, &admin, &ciphertext_blob, &HashMap::new(), "").await,
            Code::InvalidArgument,
            "InvalidCiphertextException",
            "",
        );
        data_keys.push(opened.plaintext);
    }
    assert_ne!(data_keys[0][..16], data_keys[1][..], "random data keys");
    client
        .rotate_key_on_demand(authed(
            &admin,
            pb::RotateKeyOnDemandRequest {
                key_id: key.clone(),
            },
        ))
        .await
        .unwrap();
    let answer = client
        .generate_data_key_without_plaintext(gdkwp(&key, pb::DataKeySpec::Aes256, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (answer.key_id.as_str(), answer.key_version),
        (key.as_str(), 2)
    );
    let opened = decrypt(&mut client, &admin, &answer.ciphertext_blob, &context, "")
        .await
        .unwrap();
    assert_eq!((opened.key_version, opened.plaintext.len()), (2, 32));

    check_status(
        client
            .generate_data_key_without_plaintext(gdkwp(&key, pb::DataKeySpec::Aes256, Some(32)))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "not both",
    );
    check_status(
        client
            .generate_data_key_without_plaintext(gdkwp(&key, pb::DataKeySpec::Unspecified, None))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "number_of_bytes",
    );
    check_status(
        client
            .generate_data_key_without_plaintext(gdkwp(
                &key,
                pb::DataKeySpec::Unspecified,
                Some(1025),
            ))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "1025",
    );

    // MACs.
    let h256 = new_key_of(&mut client, &admin, pb::KeySpec::Hmac256).await;
    let h256_other = new_key_of(&mut client, &admin, pb::KeySpec::Hmac256).await;
    let h384 = new_key_of(&mut client, &admin, pb::KeySpec::Hmac384).await;
    client
        .create_alias(authed(
            &admin,
            pb::CreateAliasRequest {
                alias_name: "alias/mac".into(),
                target_key_id: h384.clone(),
            },
        ))
        .await
        .unwrap();
    check_status(
        client
            .generate_data_key_without_plaintext(gdkwp(&h256, pb::DataKeySpec::Aes256, None))
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
        "",
    );
    let shared = client.clone();
    let generate = |key_id: &str, message: &[u8], alg: pb::MacAlgorithm| {
        let (mut client, admin) = (shared.clone(), admin.clone());
        let request = pb::GenerateMacRequest {
            key_id: key_id.into(),
            message: message.to_vec(),
            mac_algorithm: alg.into(),
            grant_tokens: vec![],
        };
        async move {
            client
                .generate_mac(authed(&admin, request))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let shared = client.clone();
    let verify = |key_id: &str, message: &[u8], mac: &[u8], alg: pb::MacAlgorithm| {
        let (mut client, admin) = (shared.clone(), admin.clone());
        let request = pb::VerifyMacRequest {
            key_id: key_id.into(),
            message: message.to_vec(),
            mac: mac.to_vec(),
            mac_algorithm: alg.into(),
            grant_tokens: vec![],
        };
        async move {
            client
                .verify_mac(authed(&admin, request))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let sha256 = pb::MacAlgorithm::HmacSha256;
    let sha384 = pb::MacAlgorithm::HmacSha384;
    let made = generate(&h256, b"message", sha256).await;
    assert_eq!(made.mac.len(), 32);
    assert_eq!(made.key_id, h256);
    assert_eq!(made.mac_algorithm, i32::from(sha256));
    assert_eq!(
        verify(&h256, b"message", &made.mac, sha256).await.unwrap(),
        pb::VerifyMacResponse {
            key_id: h256.clone(),
            mac_valid: true,
            mac_algorithm: sha256.into(),
        }
    );
    let made384 = generate("alias/mac", b"message", sha384).await;
    assert_eq!(
        (made384.mac.len(), made384.key_id.as_str()),
        (48, h384.as_str())
    );
    assert_eq!(
        verify("alias/mac", b"message", &made384.mac, sha384)
            .await
            .unwrap(),
        pb::VerifyMacResponse {
            key_id: h384.clone(),
            mac_valid: true,
            mac_algorithm: sha384.into(),
        }
    );
    let mut flipped = made.mac.clone();
    flipped[31] ^= 1;
    let mismatches: [(&str, &str, &[u8], &[u8]); 5] = [
        ("a flipped bit", &h256, b"message", &flipped),
        ("a truncated MAC", &h256, b"message", &made.mac[..16]),
        ("another message", &h256, b"messagE", &made.mac),
        ("another key", &h256_other, b"message", &made.mac),
        ("an empty MAC", &h256, b"message", b""),
    ];
    for (what, key_id, message, mac) in mismatches {
        let result = verify(key_id, message, mac, sha256).await;
        assert!(result.is_err(), "{what}: {result:?}");
        check_status(
            result,
            Code::InvalidArgument,
            "KMSInvalidMacException",
            "the MAC does not match",
        );
    }
    check_status(
        verify(&h256, b"message", &made.mac, sha384).await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
        "has key spec HMAC_256 and does not support HMAC_SHA_384",
    );
    check_status(
        verify(&h256, b"message", &made.mac, pb::MacAlgorithm::Unspecified).await,
        Code::InvalidArgument,
        "ValidationException",
        "mac_algorithm is required",
    );
    check_status(
        verify(&key, b"message", &made.mac, sha256).await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
        "",
    );
    check_status(
        verify(&h256, b"", &made.mac, sha256).await,
        Code::InvalidArgument,
        "ValidationException",
        "1–4096",
    );
    kms.server.stop().await.unwrap();
}

/// ListUserPolicies shows what AttachUserPolicy and PutUserPolicy added,
/// attached and inline apart; DetachUserPolicy and DeleteUserPolicy take
/// one away (and the access it gave); ListPolicies returns every managed
/// policy with its document.
#[tokio::test]
async fn identity_policies_detach_delete_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let ch = channel(&kms).await;
    let client = KeyManagementServiceClient::new(ch.clone());
    let mut iam_client = IdentityServiceClient::new(ch);
    let admin = kms.admin.clone();
    let carol = new_user(&mut iam_client, &admin, "carol").await;
    let shared = iam_client.clone();
    let listed = |user: &str| {
        let (mut iam_client, admin) = (shared.clone(), admin.clone());
        let request = iam::ListUserPoliciesRequest {
            user_name: user.into(),
        };
        async move {
            iam_client
                .list_user_policies(authed(&admin, request))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let policies = |attached: &[&str], inline: &[&str]| iam::ListUserPoliciesResponse {
        attached_policies: attached.iter().map(|s| s.to_string()).collect(),
        inline_policies: inline.iter().map(|s| s.to_string()).collect(),
    };
    assert_eq!(listed("carol").await.unwrap(), policies(&[], &[]));
    for policy in ["TableReadOnlyAccess", "KeyAdministratorAccess"] {
        iam_client
            .attach_user_policy(authed(
                &admin,
                iam::AttachUserPolicyRequest {
                    user_name: "carol".into(),
                    policy_name: policy.into(),
                },
            ))
            .await
            .unwrap();
    }
    let allow = |action: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        )
    };
    for (name, action) in [
        ("random-only", "kms:GenerateRandom"),
        ("zz-tables", "table:GetItem"),
    ] {
        iam_client
            .put_user_policy(authed(
                &admin,
                iam::PutUserPolicyRequest {
                    user_name: "user/carol".into(),
                    policy_name: name.into(),
                    policy_document: allow(action),
                },
            ))
            .await
            .unwrap();
    }
    let both = policies(
        &["KeyAdministratorAccess", "TableReadOnlyAccess"],
        &["random-only", "zz-tables"],
    );
    assert_eq!(listed("carol").await.unwrap(), both);
    assert_eq!(listed("user/carol").await.unwrap(), both);
    let shared = client.clone();
    let random = |token: &str| {
        let mut client = shared.clone();
        let token = token.to_string();
        async move {
            client
                .generate_random(authed(
                    &token,
                    pb::GenerateRandomRequest {
                        number_of_bytes: Some(4),
                    },
                ))
                .await
                .map(|r| r.into_inner().plaintext.len())
        }
    };
    let shared = client.clone();
    let list_keys = |token: &str| {
        let mut client = shared.clone();
        let token = token.to_string();
        async move {
            client
                .list_keys(authed(&token, pb::ListKeysRequest::default()))
                .await
                .map(|r| r.into_inner().truncated)
        }
    };
    assert_eq!(random(&carol).await.unwrap(), 4);
    list_keys(&carol).await.unwrap();

    let detach = |user: &str, policy: &str| {
        authed(
            &admin,
            iam::DetachUserPolicyRequest {
                user_name: user.into(),
                policy_name: policy.into(),
            },
        )
    };
    let answer = iam_client
        .detach_user_policy(detach("carol", "TableReadOnlyAccess"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, iam::DetachUserPolicyResponse {});
    assert_eq!(
        listed("carol").await.unwrap(),
        policies(&["KeyAdministratorAccess"], &["random-only", "zz-tables"])
    );
    check_status(
        iam_client
            .detach_user_policy(detach("carol", "TableReadOnlyAccess"))
            .await,
        Code::NotFound,
        "NotFoundException",
        "policy TableReadOnlyAccess is not attached to user/carol",
    );
    iam_client
        .detach_user_policy(detach("user/carol", "KeyAdministratorAccess"))
        .await
        .unwrap();
    assert_eq!(
        listed("carol").await.unwrap(),
        policies(&[], &["random-only", "zz-tables"])
    );
    check_status(
        list_keys(&carol).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/carol is not authorized to perform: kms:ListKeys",
    );
    assert_eq!(random(&carol).await.unwrap(), 4);

    let delete = |user: &str, policy: &str| {
        authed(
            &admin,
            iam::DeleteUserPolicyRequest {
                user_name: user.into(),
                policy_name: policy.into(),
            },
        )
    };
    let answer = iam_client
        .delete_user_policy(delete("carol", "random-only"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer, iam::DeleteUserPolicyResponse {});
    assert_eq!(
        listed("carol").await.unwrap(),
        policies(&[], &["zz-tables"])
    );
    check_status(
        random(&carol).await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "user/carol is not authorized to perform: kms:GenerateRandom",
    );
    check_status(
        iam_client
            .delete_user_policy(delete("carol", "random-only"))
            .await,
        Code::NotFound,
        "NotFoundException",
        "user/carol has no inline policy random-only",
    );
    iam_client
        .delete_user_policy(delete("user/carol", "zz-tables"))
        .await
        .unwrap();
    assert_eq!(listed("carol").await.unwrap(), policies(&[], &[]));
    // GetUser agrees.
    let user = iam_client
        .get_user(authed(
            &admin,
            iam::GetUserRequest {
                user_name: "carol".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        user.attached_policies.is_empty() && user.inline_policies.is_empty(),
        "{user:?}"
    );
    check_status(
        listed("nobody").await,
        Code::NotFound,
        "NotFoundException",
        "user/nobody",
    );
    check_status(
        iam_client
            .detach_user_policy(detach("nobody", "TableFullAccess"))
            .await,
        Code::NotFound,
        "NotFoundException",
        "user/nobody",
    );
    check_status(
        iam_client.delete_user_policy(delete("nobody", "x")).await,
        Code::NotFound,
        "NotFoundException",
        "user/nobody",
    );

    let managed = iam_client
        .list_policies(authed(&admin, iam::ListPoliciesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .policies;
    let names: Vec<&str> = managed.iter().map(|p| p.policy_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "AdministratorAccess",
            "TableFullAccess",
            "TableReadOnlyAccess",
            "KeyAdministratorAccess"
        ]
    );
    let shipped: Vec<iam::ManagedPolicy> = kms_service::policy::managed_policies()
        .iter()
        .map(|(name, doc)| iam::ManagedPolicy {
            policy_name: name.to_string(),
            policy_document: doc.to_string(),
        })
        .collect();
    assert_eq!(managed, shipped);
    let admin_doc: serde_json::Value = serde_json::from_str(&managed[0].policy_document).unwrap();
    assert_eq!(admin_doc["Statement"][0]["Action"], "*");
    let tables_doc: serde_json::Value = serde_json::from_str(&managed[1].policy_document).unwrap();
    assert_eq!(tables_doc["Statement"][0]["Action"], "table:*");
    check_status(
        iam_client
            .list_policies(authed(&carol, iam::ListPoliciesRequest {}))
            .await,
        Code::PermissionDenied,
        "AccessDeniedException",
        "iam:ListPolicies",
    );
    kms.server.stop().await.unwrap();
}

/// Server reflection (v1, and v1alpha for older clients) lists the two
/// services of the contract and health. Made with the raw codec: the
/// generated reflection client (tonic-reflection) is not a dependency of
/// this crate. One ServerReflectionRequest `{list_services: ""}` (field 7)
/// is sent on the bidirectional stream, which the server answers with one
/// ServerReflectionResponse; its `list_services_response` (field 6) holds
/// one ServiceResponse (field 1) per service, each with its name (field 1).
#[tokio::test]
async fn reflection_lists_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let kms = start(dir.path()).await;
    let (v1_list, v1alpha_list) = reflection::list_services(channel(&kms).await).await;
    // Exactly what this port serves: not table-service's service, whose
    // descriptor is in the same contract.
    let served = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "iam.v1.IdentityService",
        "kms.v1.KeyManagementService",
    ];
    assert_eq!(v1_list, served);
    assert_eq!(v1alpha_list, served);
    kms.server.stop().await.unwrap();
}
