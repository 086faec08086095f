//! Domain-level tests of the service: every RPC's denial and bad-input
//! paths, forwarded identity, grants, rotation, deletion, persistence and
//! fail-closed auditing. Each area has one small `check`-style helper.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::audit::{AuditConfig, AuditSink, AuditSyncer, Batching, ChainHead};
use crate::clock::ManualClock;
use crate::crypto::mac::MacAlgorithm;
use crate::crypto::root_key::SoftwareRootKey;
use crate::grants::{GrantConstraints, GrantOperation};
use crate::identity::PrincipalRecord;
use crate::keys::KeySpec;
use crate::store::sqlite::SqliteStore;

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

struct Fixture {
    kms: Kms,
    admin: Credentials,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

fn creds(token: &str) -> Credentials {
    Credentials {
        authorization: Some(format!("Bearer {token}")),
        request_id: "test".into(),
        ..Credentials::default()
    }
}

fn audit_for(dir: &std::path::Path, root: &dyn RootKey) -> AuditLog {
    AuditLog::open(AuditConfig::new(
        dir.join("audit.jsonl"),
        dir.join("audit.jsonl.checkpoints"),
        root.derive(crate::AUDIT_CHECKPOINT_PURPOSE).unwrap(),
    ))
    .expect("audit log opens")
}

async fn open_at(
    dir: &std::path::Path,
    root: Arc<SoftwareRootKey>,
    clock: Arc<ManualClock>,
) -> Kms {
    let store = SqliteStore::open(&dir.join("kms.db")).expect("store opens");
    let audit = audit_for(dir, root.as_ref());
    Kms::open(Arc::new(store), root, audit, clock).expect("kms opens")
}

/// Makes the administrator of a fresh store; returns its credentials.
async fn bootstrap_admin(kms: &Kms) -> Credentials {
    let token = kms
        .bootstrap_principal("user/admin", PrincipalKind::User, &["AdministratorAccess"])
        .await
        .expect("bootstrap")
        .expect("fresh store");
    creds(&token.token)
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let root = Arc::new(SoftwareRootKey::generate());
    let kms = open_at(dir.path(), root, clock.clone()).await;
    let admin = bootstrap_admin(&kms).await;
    Fixture {
        kms,
        admin,
        clock,
        dir,
    }
}

impl Fixture {
    /// `plaintext` encrypted under `key` by the administrator.
    async fn blob(&self, key: &str, plaintext: &[u8], context: &EncryptionContext) -> Vec<u8> {
        self.kms
            .encrypt(&self.admin, key, plaintext, context, &[])
            .await
            .unwrap()
            .ciphertext_blob
    }

    async fn key(&self, spec: KeySpec) -> String {
        self.kms
            .create_key(
                &self.admin,
                CreateKeyInput {
                    description: "test".into(),
                    spec,
                    usage: None,
                    policy: None,
                    tags: vec![],
                },
            )
            .await
            .expect("create key")
            .key_id
    }

    /// Creates a user with the given managed policies; returns its credentials.
    async fn user(&self, name: &str, kind: PrincipalKind, policies: &[&str]) -> Credentials {
        let record = self
            .kms
            .create_user(&self.admin, name, Some(kind))
            .await
            .expect("create user");
        for p in policies {
            self.kms
                .attach_user_policy(&self.admin, &record.principal, p)
                .await
                .expect("attach");
        }
        let token = self
            .kms
            .create_access_token(&self.admin, &record.principal)
            .await
            .expect("token");
        creds(&token.token)
    }

    /// The newest audit record that `matches`.
    fn last_record(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        self.audit_lines()
            .into_iter()
            .rev()
            .find(|r| matches(r))
            .expect("a matching audit record")
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Asserts an error's AWS reason and that its message contains `needle`.
#[track_caller]
fn check_err<T>(result: Result<T, KmsError>, reason: &str, needle: &str) {
    match result {
        Ok(_) => panic!("expected {reason} ({needle}), got Ok"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "wrong reason for error: {e}");
            assert!(
                e.to_string().contains(needle),
                "message {:?} does not contain {needle:?}",
                e.to_string()
            );
        }
    }
}

const USER_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "EnableIdentityPolicies", "Effect": "Allow", "Principal": {"AWS": "account"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "AllowAdmin", "Effect": "Allow", "Principal": {"AWS": "user/admin"}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "AllowKeyUse", "Effect": "Allow", "Principal": {"AWS": "user/bob"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"}
  ]
}"#;

#[tokio::test]
async fn seed_story_denied_then_granted_by_key_policy() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("table", "orders")]);
    let blob = f
        .kms
        .encrypt(&f.admin, &key, b"secret", &c, &[])
        .await
        .expect("encrypt")
        .ciphertext_blob;
    let bob = f
        .user("bob", PrincipalKind::User, &["TableFullAccess"])
        .await;
    check_err(
        f.kms.decrypt(&bob, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        &format!(
            "User: user/bob is not authorized to perform: kms:Decrypt on resource: key/{key} because no identity-based policy allows the kms:Decrypt action"
        ),
    );
    f.kms
        .put_key_policy(&f.admin, &key, "default", USER_POLICY)
        .await
        .expect("put policy");
    let plain = f
        .kms
        .decrypt(&bob, &blob, &c, "", &[])
        .await
        .expect("bob decrypts");
    assert_eq!(plain.plaintext.as_slice(), b"secret");
    // Both decisions are in the audit log.
    let decisions: Vec<(String, String)> = f
        .audit_lines()
        .iter()
        .filter(|r| r["event_name"] == "Decrypt" && r["principal"] == "user/bob")
        .map(|r| {
            (
                r["decision"].as_str().unwrap_or("").to_string(),
                r["error_code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("Deny".to_string(), "AccessDeniedException".to_string()),
            ("Allow".to_string(), String::new())
        ]
    );
}

#[tokio::test]
async fn bad_input_is_refused_with_reason_and_message() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let hmac = f.key(KeySpec::Hmac256).await;
    let none = EncryptionContext::new();
    let blob = f.blob(&key, b"x", &ctx(&[("a", "b")])).await;
    let k = &f.kms;
    let a = &f.admin;
    check_err(
        k.encrypt(a, &key, b"", &none, &[]).await,
        "ValidationException",
        "plaintext must have 1–4096 bytes; it has 0",
    );
    check_err(
        k.encrypt(a, &key, &[0u8; 4097], &none, &[]).await,
        "ValidationException",
        "it has 4097",
    );
    check_err(
        k.generate_data_key(a, &key, &none, DataKeyLength::Bytes(0), &[])
            .await,
        "ValidationException",
        "number_of_bytes 0 is out of range; use 1–1024",
    );
    check_err(
        data_key_length(None, Some(0)),
        "ValidationException",
        "number_of_bytes 0 is out of range",
    );
    check_err(
        data_key_length(None, Some(1025)),
        "ValidationException",
        "number_of_bytes 1025",
    );
    check_err(
        data_key_length(None, None),
        "ValidationException",
        "specify key_spec",
    );
    check_err(
        data_key_length(Some(DataKeyLength::Aes256), Some(3)),
        "ValidationException",
        "not both",
    );
    check_err(
        k.encrypt(a, "00000000-0000-0000-0000-000000000000", b"x", &none, &[])
            .await,
        "NotFoundException",
        "does not exist",
    );
    check_err(
        k.encrypt(a, "alias/nope", b"x", &none, &[]).await,
        "NotFoundException",
        "Alias alias/nope is not found",
    );
    check_err(
        k.encrypt(a, "", b"x", &none, &[]).await,
        "ValidationException",
        "key_id is required",
    );
    let policy_before = k.get_key_policy(a, &key, "default").await.unwrap();
    check_err(
        k.put_key_policy(a, &key, "default", "{not json").await,
        "MalformedPolicyDocumentException",
        "key policy",
    );
    let huge = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"{}","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}]}}"#,
        "x".repeat(33 * 1024)
    );
    check_err(
        k.put_key_policy(a, &key, "default", &huge).await,
        "MalformedPolicyDocumentException",
        "limit is 32768 bytes",
    );
    let bad_op = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEqualz":{"kms:ViaService":"x"}}}]}"#;
    check_err(
        k.put_key_policy(a, &key, "default", bad_op).await,
        "MalformedPolicyDocumentException",
        "StringEqualz",
    );
    assert_eq!(
        k.get_key_policy(a, &key, "default").await.unwrap(),
        policy_before,
        "a refused policy changed nothing"
    );
    check_err(
        k.schedule_key_deletion(a, &key, Some(6)).await,
        "ValidationException",
        "pending_window_in_days 6",
    );
    check_err(
        k.schedule_key_deletion(a, &key, Some(31)).await,
        "ValidationException",
        "pending_window_in_days 31",
    );
    check_err(
        k.encrypt(a, &hmac, b"x", &none, &[]).await,
        "InvalidKeyUsageException",
        "GENERATE_VERIFY_MAC",
    );
    check_err(
        k.generate_mac(a, &key, b"x", MacAlgorithm::HmacSha256, &[])
            .await,
        "InvalidKeyUsageException",
        "ENCRYPT_DECRYPT",
    );
    check_err(
        k.generate_mac(a, &hmac, b"x", MacAlgorithm::HmacSha512, &[])
            .await,
        "InvalidKeyUsageException",
        "HMAC_SHA_512",
    );
    // Truncated, bit-flipped, foreign, or with a wrong or missing context:
    // one answer for all (which check failed is not told), through Decrypt
    // and through ReEncrypt alike.
    const INVALID: &str =
        "the ciphertext is invalid, was altered, or does not match the encryption context";
    let right = ctx(&[("a", "b")]);
    let mut bad: Vec<(String, Vec<u8>, EncryptionContext)> = vec![
        (
            "truncated by one byte".into(),
            blob[..blob.len() - 1].to_vec(),
            right.clone(),
        ),
        ("cut to 10 bytes".into(), blob[..10].to_vec(), right.clone()),
        ("no context".into(), blob.clone(), none.clone()),
        ("another context".into(), blob.clone(), ctx(&[("a", "c")])),
    ];
    for i in [0usize, 1, 17, 20, 30, 60, 70, blob.len() - 1] {
        let mut flipped = blob.clone();
        flipped[i] ^= 0x01;
        bad.push((format!("bit flipped at {i}"), flipped, right.clone()));
    }
    let mut foreign = blob.clone();
    foreign[1..17].copy_from_slice(&[7u8; 16]);
    bad.push(("naming another key".into(), foreign, right.clone()));
    for (what, ciphertext, context) in &bad {
        match k.decrypt(a, ciphertext, context, "", &[]).await {
            Err(KmsError::InvalidCiphertext) => {}
            other => panic!("Decrypt of a ciphertext {what}: {:?}", other.map(drop)),
        }
        match k
            .re_encrypt(a, ciphertext, context, "", &key, &right, &[])
            .await
        {
            Err(e @ KmsError::InvalidCiphertext) => assert_eq!(e.to_string(), INVALID),
            other => panic!("ReEncrypt of a ciphertext {what}: {:?}", other.map(drop)),
        }
    }
    check_err(
        k.decrypt(a, b"", &none, "", &[]).await,
        "ValidationException",
        "ciphertext_blob",
    );
    let other = f.key(KeySpec::SymmetricDefault).await;
    check_err(
        k.decrypt(a, &blob, &ctx(&[("a", "b")]), &other, &[]).await,
        "IncorrectKeyException",
        "not encrypted under key",
    );
    check_err(
        k.encrypt(a, &key, b"x", &none, &["gt-nope".into()]).await,
        "InvalidGrantTokenException",
        "",
    );
    check_err(
        k.generate_random(a, Some(0)).await,
        "ValidationException",
        "number_of_bytes 0",
    );
    check_err(
        k.generate_random(a, Some(1025)).await,
        "ValidationException",
        "1025",
    );
    check_err(
        k.list_keys(a, 1001, "").await,
        "ValidationException",
        "limit 1001",
    );
    check_err(
        k.create_alias(a, "orders", &key).await,
        "ValidationException",
        "must start with \"alias/\"",
    );
    check_err(
        k.create_alias(a, "alias/aws/x", &key).await,
        "ValidationException",
        "reserved",
    );
    let too_big_ctx: EncryptionContext = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    check_err(
        k.encrypt(a, &key, b"x", &too_big_ctx, &[]).await,
        "ValidationException",
        "65 pairs",
    );
    check_err(
        k.enable_key_rotation(a, &hmac, None).await,
        "UnsupportedOperationException",
        "SYMMETRIC_DEFAULT",
    );
    check_err(
        k.enable_key_rotation(a, &key, Some(89)).await,
        "ValidationException",
        "90–2560",
    );
    // None of it changed the key.
    let after = k.describe_key(a, &key, &[]).await.unwrap();
    assert_eq!(after.state, KeyState::Enabled);
    assert_eq!(after.rotation_period_days, None);
    assert!(
        k.decrypt(a, &blob, &ctx(&[("a", "b")]), "", &[])
            .await
            .is_ok()
    );
}

/// A prefixed name says what kind of principal it is; a kind that says
/// otherwise is refused rather than silently overridden, since a service
/// principal may act on behalf of others. An unset kind follows the name.
#[tokio::test]
async fn create_user_kind_must_agree_with_a_prefixed_name() {
    let f = fixture().await;
    for (name, kind, named) in [
        (
            "service/x",
            PrincipalKind::User,
            "names a service principal but kind asks for a user one",
        ),
        (
            "user/y",
            PrincipalKind::Service,
            "names a user principal but kind asks for a service one",
        ),
    ] {
        check_err(
            f.kms.create_user(&f.admin, name, Some(kind)).await,
            "ValidationException",
            named,
        );
        check_err(
            f.kms.get_user(&f.admin, name).await,
            "NotFoundException",
            name,
        );
    }
    let cases = [
        ("service/a", None, PrincipalKind::Service),
        (
            "service/b",
            Some(PrincipalKind::Service),
            PrincipalKind::Service,
        ),
        ("user/c", None, PrincipalKind::User),
        ("d", None, PrincipalKind::User),
        ("e", Some(PrincipalKind::Service), PrincipalKind::Service),
    ];
    for (name, kind, expected) in cases {
        let made = f.kms.create_user(&f.admin, name, kind).await.unwrap();
        assert_eq!(made.kind, expected, "{name}");
    }
}

#[tokio::test]
async fn missing_malformed_unknown_and_revoked_tokens_are_unauthenticated() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let bob = f
        .kms
        .create_user(&f.admin, "bob", Some(PrincipalKind::User))
        .await
        .unwrap();
    let t = f
        .kms
        .create_access_token(&f.admin, &bob.principal)
        .await
        .unwrap();
    f.kms
        .delete_access_token(&f.admin, "bob", &t.token_id)
        .await
        .unwrap();
    let cases: Vec<(Credentials, &str, &str)> = vec![
        (
            Credentials::default(),
            "MissingAuthenticationTokenException",
            "missing credential",
        ),
        (
            Credentials {
                authorization: Some("Basic abc".into()),
                ..Credentials::default()
            },
            "IncompleteSignatureException",
            "malformed credential: expected \"Bearer <token>\", sent once, with a token of 1 to 256 visible ASCII characters",
        ),
        (creds(""), "IncompleteSignatureException", "malformed"),
        (
            creds(&"t".repeat(257)),
            "IncompleteSignatureException",
            "malformed",
        ),
        (
            creds("lbx_not-a-real-token"),
            "UnrecognizedClientException",
            "not a valid access token",
        ),
        (creds(&t.token), "UnrecognizedClientException", "revoked"),
    ];
    for (c, reason, needle) in cases {
        check_err(f.kms.describe_key(&c, &key, &[]).await, reason, needle);
    }
    let unauth = f
        .audit_lines()
        .iter()
        .filter(|r| r["decision"] == "Unauthenticated")
        .count();
    assert_eq!(unauth, 6, "every failed authentication is audited");
}

#[tokio::test]
async fn forwarded_identity_is_decided_for_the_end_caller() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let svc = f.user("table-service", PrincipalKind::Service, &[]).await;
    let bob = f
        .user("bob", PrincipalKind::User, &["TableFullAccess"])
        .await;
    let c = ctx(&[("t", "1")]);
    // The service alone cannot use a customer key.
    check_err(
        f.kms
            .generate_data_key(&svc, &key, &c, DataKeyLength::Aes256, &[])
            .await,
        "AccessDeniedException",
        "User: service/table-service is not authorized to perform: kms:GenerateDataKey",
    );
    let via = |user: &Credentials| Credentials {
        on_behalf_of: user.authorization.clone(),
        ..svc.clone()
    };
    // Bob through the service, without key permission: denied for bob.
    check_err(
        f.kms
            .generate_data_key(&via(&bob), &key, &c, DataKeyLength::Aes256, &[])
            .await,
        "AccessDeniedException",
        "User: user/bob is not authorized to perform: kms:GenerateDataKey",
    );
    // Forged and revoked forwarded tokens are refused.
    check_err(
        f.kms
            .describe_key(&via(&creds("lbx_forged")), &key, &[])
            .await,
        "UnrecognizedClientException",
        "the caller's credential (forwarded in x-on-behalf-of) is not a valid access token",
    );
    // A service whose own credential fails is told so, distinctly from its
    // caller's: the service is misconfigured, not its caller.
    let broken_service = Credentials {
        authorization: Some("Bearer lbx_forged".into()),
        ..via(&bob)
    };
    let refused = f.kms.describe_key(&broken_service, &key, &[]).await;
    check_err(
        f.kms.describe_key(&broken_service, &key, &[]).await,
        "UnrecognizedClientException",
        "the service's own credential (authorization) is not a valid access token",
    );
    assert!(matches!(
        refused,
        Err(KmsError::Unauthenticated {
            of: CredentialOf::Service,
            ..
        })
    ));
    assert!(matches!(
        f.kms
            .describe_key(&via(&creds("lbx_forged")), &key, &[])
            .await,
        Err(KmsError::Unauthenticated {
            of: CredentialOf::Forwarded,
            ..
        })
    ));
    assert!(matches!(
        f.kms.describe_key(&creds("lbx_forged"), &key, &[]).await,
        Err(KmsError::Unauthenticated {
            of: CredentialOf::Caller,
            ..
        })
    ));
    // A service may not forward its own credential, even where "any
    // principal via the service" may use the key; another service calling
    // through it is decided as that service, via it.
    let other = f.user("batch-service", PrincipalKind::Service, &[]).await;
    let anyone_via_tables = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"AnyoneViaTables","Effect":"Allow","Principal":"*","Action":["kms:GenerateDataKey","kms:Decrypt","kms:DescribeKey"],"Resource":"*",
       "Condition":{"StringEquals":{"kms:ViaService":"service/table-service"}}}]}"#;
    let anyone_key = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .put_key_policy(&f.admin, &anyone_key, "default", anyone_via_tables)
        .await
        .unwrap();
    check_err(
        f.kms
            .generate_data_key(&via(&svc), &anyone_key, &c, DataKeyLength::Aes256, &[])
            .await,
        "AccessDeniedException",
        "may not act on behalf of itself",
    );
    // Its record names the service on both sides.
    let refused = f.last_record(|r| r["event_name"] == "GenerateDataKey");
    assert_eq!(
        (
            &refused["principal"],
            &refused["via_service"],
            &refused["decision"]
        ),
        (
            &serde_json::json!("service/table-service"),
            &serde_json::json!("service/table-service"),
            &serde_json::json!("Deny")
        ),
        "{refused}"
    );
    for caller in [&other, &bob] {
        f.kms
            .generate_data_key(&via(caller), &anyone_key, &c, DataKeyLength::Aes256, &[])
            .await
            .expect("a caller via the service");
    }
    let identity = f.kms.get_caller_identity(&via(&other)).await.unwrap();
    assert_eq!(
        (identity.principal.as_str(), identity.via_service.as_deref()),
        ("service/batch-service", Some("service/table-service"))
    );
    // A user cannot act on behalf of someone else.
    let bob_fwd = Credentials {
        on_behalf_of: f.admin.authorization.clone(),
        ..bob.clone()
    };
    check_err(
        f.kms.describe_key(&bob_fwd, &key, &[]).await,
        "AccessDeniedException",
        "not a service principal",
    );
    // Its record names bob, who tried.
    let refused = f.last_record(|r| r["event_name"] == "DescribeKey");
    assert_eq!(refused["principal"], "user/bob", "{refused}");
    assert!(refused["via_service"].is_null(), "{refused}");
    // A key policy can allow bob only via the table service.
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"BobViaTables","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":"*",
       "Condition":{"StringEquals":{"kms:ViaService":"service/table-service"}}}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    check_err(
        f.kms
            .generate_data_key(&bob, &key, &c, DataKeyLength::Aes256, &[])
            .await,
        "AccessDeniedException",
        "user/bob",
    );
    let dk = f
        .kms
        .generate_data_key(&via(&bob), &key, &c, DataKeyLength::Aes256, &[])
        .await
        .expect("bob via service");
    assert_eq!(dk.plaintext.len(), 32);
    let back = f
        .kms
        .decrypt(&via(&bob), &dk.ciphertext_blob, &c, "", &[])
        .await
        .expect("decrypt via service");
    assert_eq!(back.plaintext.as_slice(), dk.plaintext.as_slice());
    let caller = f.kms.get_caller_identity(&via(&bob)).await.unwrap();
    assert_eq!(
        (caller.principal.as_str(), caller.via_service.as_deref()),
        ("user/bob", Some("service/table-service"))
    );
    let last = f.last_record(|r| r["event_name"] == "Decrypt");
    assert_eq!(last["principal"], "user/bob");
    assert_eq!(last["via_service"], "service/table-service");
    // Revoke bob's token: the forwarded call fails.
    let bob_tokens = f.kms.list_access_tokens(&f.admin, "bob").await.unwrap();
    f.kms
        .delete_access_token(&f.admin, "bob", &bob_tokens[0].token_id)
        .await
        .unwrap();
    check_err(
        f.kms
            .decrypt(&via(&bob), &dk.ciphertext_blob, &c, "", &[])
            .await,
        "UnrecognizedClientException",
        "revoked",
    );
    // Its record names the service that forwarded it; the caller is not
    // known.
    let refused = f.last_record(|r| r["event_name"] == "Decrypt");
    assert_eq!(
        (
            &refused["principal"],
            &refused["via_service"],
            &refused["decision"]
        ),
        (
            &serde_json::Value::Null,
            &serde_json::json!("service/table-service"),
            &serde_json::json!("Unauthenticated")
        ),
        "{refused}"
    );
    // A service whose own credential fails is named by nothing.
    f.kms
        .describe_key(&broken_service, &key, &[])
        .await
        .unwrap_err();
    let refused = f.last_record(|r| r["event_name"] == "DescribeKey");
    assert!(
        refused["principal"].is_null() && refused["via_service"].is_null(),
        "{refused}"
    );
}

#[tokio::test]
async fn authorize_answers_for_the_forwarded_caller() {
    let f = fixture().await;
    let svc = f.user("table-service", PrincipalKind::Service, &[]).await;
    let bob = f
        .user("bob", PrincipalKind::User, &["TableReadOnlyAccess"])
        .await;
    let via = Credentials {
        on_behalf_of: bob.authorization.clone(),
        ..svc.clone()
    };
    let q = |a: &str, r: &str| (a.to_string(), r.to_string());
    let (principal, answers) = f
        .kms
        .authorize_questions(
            &via,
            &[
                q("table:GetItem", "table/orders"),
                q("table:PutItem", "table/orders"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(principal, "user/bob");
    assert_eq!(
        answers.iter().map(|a| a.allowed).collect::<Vec<_>>(),
        vec![true, false]
    );
    assert!(
        answers[1]
            .message
            .contains("not authorized to perform: table:PutItem on resource: table/orders")
    );
    assert!(
        !answers[1].explicit_deny,
        "nothing denied PutItem explicitly"
    );
    // An explicit Deny is reported as such.
    let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"table:GetItem","Resource":"table/secret"}]}"#;
    f.kms
        .put_user_policy(&f.admin, "bob", "NoSecret", deny)
        .await
        .unwrap();
    let (_, denied) = f
        .kms
        .authorize_questions(
            &via,
            &[
                q("table:GetItem", "table/secret"),
                q("table:GetItem", "table/orders"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        denied
            .iter()
            .map(|a| (a.allowed, a.explicit_deny))
            .collect::<Vec<_>>(),
        vec![(false, true), (true, false)]
    );
    assert!(denied[0].message.contains("with an explicit deny"));
    check_err(
        f.kms
            .authorize_questions(&svc, &[q("table:GetItem", "table/x")])
            .await,
        "ValidationException",
        "x-on-behalf-of",
    );
    check_err(
        f.kms
            .authorize_questions(&via, &[q("kms:Decrypt", "key/abc")])
            .await,
        "ValidationException",
        "does not decide key use",
    );
    check_err(
        f.kms.authorize_questions(&via, &[]).await,
        "ValidationException",
        "1–100",
    );
}

/// `x-authorize` makes a call conditional on the forwarded caller also
/// being allowed a non-key action: kms-service decides it first, so a
/// refusal of either the table action or the key use refuses the call, and
/// the record names both resources. Only a service may send it, and only
/// well-formed questions about non-key resources.
#[tokio::test]
async fn a_call_made_conditional_with_x_authorize_needs_both_decisions() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("table", "orders")]);
    let blob = f.blob(&key, b"secret", &c).await;
    let svc = f.user("table-service", PrincipalKind::Service, &[]).await;
    let bob = f
        .user("bob", PrincipalKind::User, &["TableReadOnlyAccess"])
        .await;
    let via = |required: &[&str]| Credentials {
        on_behalf_of: bob.authorization.clone(),
        required: required.iter().map(|r| r.to_string()).collect(),
        ..svc.clone()
    };
    let get = via(&["table:GetItem table/orders"]);
    let put = via(&["table:GetItem table/orders", "table:PutItem table/orders"]);

    // Bob may read the table but not use the key: the key use is refused.
    check_err(
        f.kms.decrypt(&get, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "not authorized to perform: kms:Decrypt",
    );
    assert_eq!(get.principal.get().map(String::as_str), Some("user/bob"));
    f.kms
        .put_key_policy(&f.admin, &key, "default", USER_POLICY)
        .await
        .unwrap();
    let plain = f.kms.decrypt(&get, &blob, &c, "", &[]).await.unwrap();
    assert_eq!(plain.plaintext.as_slice(), b"secret");
    // Now bob may use the key, but not write the table: the table action
    // is refused, and nothing is decrypted.
    check_err(
        f.kms.decrypt(&put, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "User: user/bob is not authorized to perform: table:PutItem on resource: table/orders",
    );
    // Without the condition the same call goes through.
    f.kms.decrypt(&via(&[]), &blob, &c, "", &[]).await.unwrap();

    let records = f.audit_lines();
    let decrypts: Vec<_> = records
        .iter()
        .filter(|r| r["event_name"] == "Decrypt" && r["via_service"] == "service/table-service")
        .collect();
    assert_eq!(decrypts.len(), 4, "{decrypts:#?}");
    let resources = |r: &serde_json::Value| r["resources"].clone();
    let key_resource = format!("key/{key}");
    assert_eq!(
        resources(decrypts[1]),
        serde_json::json!(["table/orders", key_resource])
    );
    assert_eq!(decrypts[1]["decision"], "Allow");
    assert_eq!(resources(decrypts[2]), serde_json::json!(["table/orders"]));
    assert_eq!(decrypts[2]["decision"], "Deny");
    // Each condition with its decision; a refused one is the last, and
    // the record's own decision and statements are the refusal's.
    let conditions = |r: &serde_json::Value| {
        r["conditions"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|c| {
                        format!(
                            "{} {} {} {}",
                            c["action"].as_str().unwrap(),
                            c["resource"].as_str().unwrap(),
                            c["decision"].as_str().unwrap(),
                            c["matched_statements"]
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let read_allowed =
        r#"table:GetItem table/orders Allow ["identity:TableReadOnlyAccess:Statement[0]"]"#;
    assert_eq!(conditions(decrypts[1]), [read_allowed]);
    assert_eq!(
        decrypts[1]["matched_statements"],
        serde_json::json!(["key-policy:AllowKeyUse"])
    );
    assert_eq!(
        conditions(decrypts[2]),
        [read_allowed, "table:PutItem table/orders Deny []"]
    );
    assert_eq!(decrypts[2]["matched_statements"], serde_json::json!([]));
    // The key use refused: the record's decision and statements are the
    // Decrypt's own, the condition's allow is in the condition.
    assert_eq!(conditions(decrypts[0]), [read_allowed]);
    assert_eq!(decrypts[0]["decision"], "Deny");
    assert_eq!(decrypts[0]["matched_statements"], serde_json::json!([]));
    assert!(decrypts[3].get("conditions").is_none(), "{:?}", decrypts[3]);
    // What the condition recorded stays in the record of a call whose own
    // work writes its resources afresh.
    f.kms.describe_key(&get, &key, &[]).await.unwrap();
    let described = f.audit_lines().pop().unwrap();
    assert_eq!(described["event_name"], "DescribeKey");
    assert_eq!(
        resources(&described),
        serde_json::json!(["table/orders", key_resource])
    );
    assert_eq!(conditions(&described), [read_allowed]);
    // A call whose own work fails before deciding anything is an error,
    // not the condition's allow.
    let missing = f.kms.describe_key(&get, "alias/none", &[]).await;
    check_err(missing, "NotFoundException", "alias/none");
    let failed = f.audit_lines().pop().unwrap();
    assert_eq!(failed["decision"], "Error");
    assert_eq!(conditions(&failed), [read_allowed]);
    // A clone of credentials that were used carries no principal over.
    assert_eq!(get.clone().principal.get(), None);

    // Only a service, on behalf of someone, with well-formed questions
    // about non-key resources.
    let own = Credentials {
        required: vec!["table:GetItem table/orders".into()],
        ..bob.clone()
    };
    check_err(
        f.kms.decrypt(&own, &blob, &c, "", &[]).await,
        "ValidationException",
        "x-authorize is for services",
    );
    for (bad, needle) in [
        ("table:GetItem", "is not \"<action> <resource>\""),
        (
            "table:GetItem  table/orders",
            "is not \"<action> <resource>\"",
        ),
        (
            "table:GetItem table/a table/b",
            "is not \"<action> <resource>\"",
        ),
        ("", "is not \"<action> <resource>\""),
        ("kms:Decrypt key/abc", "does not decide key use"),
        ("kms:Decrypt alias/abc", "does not decide key use"),
    ] {
        check_err(
            f.kms.decrypt(&via(&[bad]), &blob, &c, "", &[]).await,
            "ValidationException",
            needle,
        );
    }
    let many: Vec<String> = (0..=iam_ops::MAX_AUTHORIZE_QUESTIONS)
        .map(|i| format!("table:GetItem table/t{i}"))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    check_err(
        f.kms.decrypt(&via(&many), &blob, &c, "", &[]).await,
        "ValidationException",
        "at most 100 times",
    );
    // It conditions every kind of call, not only key use.
    check_err(
        f.kms.get_caller_identity(&put).await,
        "AccessDeniedException",
        "table:PutItem",
    );
    assert_eq!(
        f.kms.get_caller_identity(&get).await.unwrap().principal,
        "user/bob"
    );
}

/// A grant that allows CreateGrant lets its grantee make only grants no
/// wider than itself: the same or fewer operations, constraints at least as
/// strict (AWS's rule); otherwise a CreateGrant-only grant would let its
/// holder give itself Decrypt.
#[tokio::test]
async fn a_grant_can_only_make_grants_no_wider_than_itself() {
    use GrantOperation::{CreateGrant, Decrypt, Encrypt};
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let equals = |pairs: &[(&str, &str)]| GrantConstraints {
        equals: Some(ctx(pairs)),
        subset: None,
    };
    let subset = |pairs: &[(&str, &str)]| GrantConstraints {
        equals: None,
        subset: Some(ctx(pairs)),
    };
    let none = GrantConstraints::default;
    let input = |operations: Vec<GrantOperation>, constraints| CreateGrantInput {
        key_id: key.clone(),
        grantee: "user/bob".into(),
        retiring: None,
        operations,
        constraints,
        name: String::new(),
        grant_tokens: vec![],
    };
    // (parent grant from the admin, child grant bob asks for, allowed?)
    type Case = (
        Vec<GrantOperation>,
        GrantConstraints,
        Vec<GrantOperation>,
        GrantConstraints,
        bool,
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        (vec![CreateGrant], none(), vec![Decrypt], none(), false),
        (vec![CreateGrant], none(), vec![CreateGrant], none(), true),
        (vec![CreateGrant, Decrypt], none(), vec![Decrypt], none(), true),
        (vec![CreateGrant, Decrypt], none(), vec![Decrypt, Encrypt], none(), false),
        (vec![CreateGrant, Decrypt], none(), vec![Decrypt], subset(&[("t", "1")]), true),
        (vec![CreateGrant, Decrypt], subset(&[("t", "1")]), vec![Decrypt], none(), false),
        (vec![CreateGrant, Decrypt], subset(&[("t", "1")]), vec![Decrypt], subset(&[("t", "2")]), false),
        (vec![CreateGrant, Decrypt], subset(&[("t", "1")]), vec![Decrypt], subset(&[("t", "1"), ("u", "2")]), true),
        (vec![CreateGrant, Decrypt], subset(&[("t", "1")]), vec![Decrypt], equals(&[("t", "1"), ("u", "2")]), true),
        (vec![CreateGrant, Decrypt], subset(&[("t", "1")]), vec![Decrypt], equals(&[("u", "2")]), false),
        (vec![CreateGrant, Decrypt], equals(&[("t", "1")]), vec![Decrypt], equals(&[("t", "1")]), true),
        (vec![CreateGrant, Decrypt], equals(&[("t", "1")]), vec![Decrypt], subset(&[("t", "1")]), false),
        (vec![CreateGrant, Decrypt], equals(&[("t", "1")]), vec![Decrypt], equals(&[("t", "1"), ("u", "2")]), false),
    ];
    for (i, (parent_ops, parent_constraints, child_ops, child_constraints, allowed)) in
        cases.into_iter().enumerate()
    {
        let parent = f
            .kms
            .create_grant(&f.admin, input(parent_ops, parent_constraints))
            .await
            .unwrap();
        let child = f
            .kms
            .create_grant(&bob, input(child_ops, child_constraints))
            .await;
        if allowed {
            let child = child.unwrap_or_else(|e| panic!("case {i}: {e:?}"));
            f.kms
                .revoke_grant(&f.admin, &key, &child.grant_id)
                .await
                .unwrap();
        } else {
            check_err(child, "AccessDeniedException", "kms:CreateGrant");
        }
        f.kms
            .revoke_grant(&f.admin, &key, &parent.grant_id)
            .await
            .unwrap();
    }
    // Nothing bob was refused left a grant behind.
    let left = f
        .kms
        .list_grants(&f.admin, &key, "", "", 0, "")
        .await
        .unwrap();
    assert!(left.items.is_empty(), "{:?}", left.items);
}

#[tokio::test]
async fn grants_allow_within_their_constraints_until_revoked() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let c = ctx(&[("tenant", "acme")]);
    let blob = f.blob(&key, b"payload", &c).await;
    let blob2 = f.blob(&key, b"payload", &ctx(&[("tenant", "evil")])).await;
    check_err(
        f.kms.decrypt(&bob, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    let grant = f
        .kms
        .create_grant(
            &f.admin,
            CreateGrantInput {
                key_id: key.clone(),
                grantee: "user/bob".into(),
                retiring: None,
                operations: vec![GrantOperation::Decrypt, GrantOperation::RetireGrant],
                constraints: GrantConstraints {
                    equals: None,
                    subset: Some(c.clone()),
                },
                name: "bob-reads-acme".into(),
                grant_tokens: vec![],
            },
        )
        .await
        .unwrap();
    assert!(
        f.kms
            .decrypt(&bob, &blob, &c, "", &[grant.token()])
            .await
            .is_ok()
    );
    check_err(
        f.kms
            .decrypt(&bob, &blob2, &ctx(&[("tenant", "evil")]), "", &[])
            .await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    check_err(
        f.kms.encrypt(&bob, &key, b"x", &c, &[]).await,
        "AccessDeniedException",
        "kms:Encrypt",
    );
    let listed = f
        .kms
        .list_grants(&f.admin, &key, "", "", 0, "")
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    // Filtered by grantee: named as CreateGrant names it; a name that could
    // be no grantee is refused rather than matching nothing.
    for (grantee, found) in [("user/bob", 1), ("service/bob", 0), ("user/alice", 0)] {
        let listed = f
            .kms
            .list_grants(&f.admin, &key, "", grantee, 0, "")
            .await
            .unwrap();
        assert_eq!(listed.items.len(), found, "{grantee}");
    }
    check_err(
        f.kms.list_grants(&f.admin, &key, "", "bob", 0, "").await,
        "ValidationException",
        "grantee_principal \"bob\" must be a principal such as user/alice",
    );
    let audit = f.last_record(|r| r["event_name"] == "Decrypt" && r["decision"] == "Allow");
    assert_eq!(audit["grant_id"], grant.grant_id.as_str());
    // The grantee may retire it (RetireGrant is among its operations).
    f.kms
        .retire_grant(&bob, &grant.token(), "", "")
        .await
        .expect("retire");
    check_err(
        f.kms.decrypt(&bob, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // Revoke path, and bad constraints.
    let g2 = f
        .kms
        .create_grant(
            &f.admin,
            CreateGrantInput {
                key_id: key.clone(),
                grantee: "user/bob".into(),
                retiring: None,
                operations: vec![GrantOperation::Decrypt],
                constraints: GrantConstraints::default(),
                name: String::new(),
                grant_tokens: vec![],
            },
        )
        .await
        .unwrap();
    assert!(
        f.kms
            .decrypt(&bob, &blob2, &ctx(&[("tenant", "evil")]), "", &[])
            .await
            .is_ok()
    );
    f.kms
        .revoke_grant(&f.admin, &key, &g2.grant_id)
        .await
        .unwrap();
    check_err(
        f.kms
            .decrypt(&bob, &blob2, &ctx(&[("tenant", "evil")]), "", &[])
            .await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    check_err(
        f.kms
            .create_grant(
                &f.admin,
                CreateGrantInput {
                    key_id: key.clone(),
                    grantee: "bob".into(),
                    retiring: None,
                    operations: vec![GrantOperation::Decrypt],
                    constraints: GrantConstraints::default(),
                    name: String::new(),
                    grant_tokens: vec![],
                },
            )
            .await,
        "ValidationException",
        "grantee_principal",
    );
    check_err(
        f.kms
            .create_grant(
                &f.admin,
                CreateGrantInput {
                    key_id: key.clone(),
                    grantee: "user/bob".into(),
                    retiring: None,
                    operations: vec![GrantOperation::DescribeKey],
                    constraints: GrantConstraints {
                        equals: Some(c.clone()),
                        subset: None,
                    },
                    name: String::new(),
                    grant_tokens: vec![],
                },
            )
            .await,
        "ValidationException",
        "constraints",
    );
    check_err(
        f.kms.revoke_grant(&bob, &key, &g2.grant_id).await,
        "AccessDeniedException",
        "kms:RevokeGrant",
    );
}

#[tokio::test]
async fn rotation_keeps_every_version_and_reencrypt_moves_forward() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("x", "y")]);
    let v1 = f
        .kms
        .encrypt(&f.admin, &key, b"old", &c, &[])
        .await
        .unwrap();
    assert_eq!(v1.key_version, 1);
    let (_, v) = f.kms.rotate_key_on_demand(&f.admin, &key).await.unwrap();
    assert_eq!(v, 2);
    let v2 = f
        .kms
        .encrypt(&f.admin, &key, b"new", &c, &[])
        .await
        .unwrap();
    assert_eq!(v2.key_version, 2);
    assert_eq!(
        f.kms
            .decrypt(&f.admin, &v1.ciphertext_blob, &c, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"old"
    );
    let moved = f
        .kms
        .re_encrypt(&f.admin, &v1.ciphertext_blob, &c, "", &key, &c, &[])
        .await
        .unwrap();
    assert_eq!(
        (moved.key_version, moved.source.clone()),
        (2, Some((key.clone(), 1)))
    );
    assert_eq!(
        f.kms
            .decrypt(&f.admin, &moved.ciphertext_blob, &c, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"old"
    );
    // To another key, with another context.
    let other = f.key(KeySpec::SymmetricDefault).await;
    let c2 = ctx(&[("x", "z")]);
    let across = f
        .kms
        .re_encrypt(&f.admin, &v1.ciphertext_blob, &c, "", &other, &c2, &[])
        .await
        .unwrap();
    assert_eq!(across.key_id, other);
    // Its record gives both sides: the destination as the record's own
    // key, version and context, the source in `source`.
    let record = f.last_record(|r| r["event_name"] == "ReEncrypt");
    assert_eq!(
        (
            &record["key_id"],
            &record["key_version"],
            &record["encryption_context"]
        ),
        (
            &serde_json::json!(other),
            &serde_json::json!(1),
            &serde_json::json!({"x": "z"})
        )
    );
    assert_eq!(
        record["source"],
        serde_json::json!({"key_id": key, "key_version": 1, "encryption_context": {"x": "y"}})
    );
    // Other calls' records have no `source`.
    let encrypted = f.last_record(|r| r["event_name"] == "Encrypt");
    assert!(encrypted.get("source").is_none(), "{encrypted}");
    // Refused at the destination (an HMAC key cannot encrypt): the record's
    // own key and version are the destination's, the source still the
    // ciphertext's.
    let mac = f.key(KeySpec::Hmac256).await;
    check_err(
        f.kms
            .re_encrypt(&f.admin, &v1.ciphertext_blob, &c, "", &mac, &c2, &[])
            .await,
        "InvalidKeyUsageException",
        "GENERATE_VERIFY_MAC",
    );
    let record = f.last_record(|r| r["event_name"] == "ReEncrypt");
    assert_eq!(
        (&record["key_id"], &record["key_version"]),
        (&serde_json::json!(mac), &serde_json::json!(1))
    );
    assert_eq!(record["source"]["key_id"], serde_json::json!(key));
    assert_eq!(record["source"]["key_version"], serde_json::json!(1));
    // Refused at the source (the request names another key than the
    // ciphertext's): the source is still the key the ciphertext names, and
    // the record has no destination.
    check_err(
        f.kms
            .re_encrypt(&f.admin, &v1.ciphertext_blob, &c, &other, &other, &c2, &[])
            .await,
        "IncorrectKeyException",
        &format!("not encrypted under key {other}"),
    );
    let record = f.last_record(|r| r["event_name"] == "ReEncrypt");
    assert_eq!(record["source"]["key_id"], serde_json::json!(key));
    assert!(record["key_id"].is_null(), "{record}");
    assert!(record["encryption_context"].is_null(), "{record}");
    check_err(
        f.kms
            .decrypt(&f.admin, &across.ciphertext_blob, &c, "", &[])
            .await,
        "InvalidCiphertextException",
        "",
    );
    assert_eq!(
        f.kms
            .decrypt(&f.admin, &across.ciphertext_blob, &c2, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"old"
    );
    // Automatic rotation.
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(90))
        .await
        .unwrap();
    let status = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(
        (status.enabled, status.period_days, status.next_rotation),
        (true, 90, Some(T0 + 90 * DAY))
    );
    f.clock.advance(89 * DAY);
    assert!(f.kms.run_maintenance().await.unwrap().rotated.is_empty());
    f.clock.advance(DAY);
    assert_eq!(
        f.kms.run_maintenance().await.unwrap().rotated,
        vec![key.clone()]
    );
    let rotations = f
        .kms
        .list_key_rotations(&f.admin, &key, 0, "")
        .await
        .unwrap();
    assert_eq!(
        rotations
            .items
            .iter()
            .map(|v| (v.version, v.origin))
            .collect::<Vec<_>>(),
        vec![
            (2, crate::keys::VersionOrigin::OnDemandRotation),
            (3, crate::keys::VersionOrigin::AutomaticRotation),
        ]
    );
    assert_eq!(
        f.kms
            .decrypt(&f.admin, &v2.ciphertext_blob, &c, "", &[])
            .await
            .unwrap()
            .key_version,
        2
    );
}

/// Every cryptographic operation refuses a disabled key
/// (DisabledException) and one pending deletion (KMSInvalidStateException),
/// naming the key: Encrypt, Decrypt, ReEncrypt from it and to it,
/// GenerateDataKey (with and without plaintext), GenerateMac and VerifyMac.
/// Enabled again (or the deletion cancelled and the key enabled), each works.
#[tokio::test]
async fn every_cryptographic_operation_refuses_a_disabled_or_pending_key() {
    let f = fixture().await;
    let none = EncryptionContext::new();
    let other = f.key(KeySpec::SymmetricDefault).await;
    let other_blob = f.blob(&other, b"o", &none).await;
    for pending in [false, true] {
        let key = f.key(KeySpec::SymmetricDefault).await;
        let hmac = f.key(KeySpec::Hmac256).await;
        let blob = f.blob(&key, b"x", &none).await;
        let (_, tag) = f
            .kms
            .generate_mac(&f.admin, &hmac, b"m", MacAlgorithm::HmacSha256, &[])
            .await
            .unwrap();
        for k in [&key, &hmac] {
            if pending {
                f.kms
                    .schedule_key_deletion(&f.admin, k, Some(7))
                    .await
                    .unwrap();
            } else {
                f.kms.disable_key(&f.admin, k).await.unwrap();
            }
        }
        let (reason, state) = if pending {
            ("KMSInvalidStateException", "pending deletion")
        } else {
            ("DisabledException", "disabled")
        };
        let k = &f.kms;
        let a = &f.admin;
        let results: Vec<(&str, &String, Result<(), KmsError>)> = vec![
            (
                "Encrypt",
                &key,
                k.encrypt(a, &key, b"x", &none, &[]).await.map(drop),
            ),
            (
                "Decrypt",
                &key,
                k.decrypt(a, &blob, &none, "", &[]).await.map(drop),
            ),
            (
                "ReEncrypt from it",
                &key,
                k.re_encrypt(a, &blob, &none, "", &other, &none, &[])
                    .await
                    .map(drop),
            ),
            (
                "ReEncrypt to it",
                &key,
                k.re_encrypt(a, &other_blob, &none, "", &key, &none, &[])
                    .await
                    .map(drop),
            ),
            (
                "GenerateDataKey",
                &key,
                k.generate_data_key(a, &key, &none, DataKeyLength::Aes256, &[])
                    .await
                    .map(drop),
            ),
            (
                "GenerateDataKeyWithoutPlaintext",
                &key,
                k.generate_data_key_without_plaintext(a, &key, &none, DataKeyLength::Aes256, &[])
                    .await
                    .map(drop),
            ),
            (
                "GenerateMac",
                &hmac,
                k.generate_mac(a, &hmac, b"m", MacAlgorithm::HmacSha256, &[])
                    .await
                    .map(drop),
            ),
            (
                "VerifyMac",
                &hmac,
                k.verify_mac(a, &hmac, b"m", &tag, MacAlgorithm::HmacSha256, &[])
                    .await
                    .map(drop),
            ),
        ];
        for (operation, named, result) in results {
            let e = result.expect_err(operation);
            assert_eq!(e.reason(), reason, "{operation}: {e}");
            let message = e.to_string();
            assert!(
                message.contains(named.as_str()) && message.contains(state),
                "{operation}: {message}"
            );
        }
        for k in [&key, &hmac] {
            if pending {
                f.kms.cancel_key_deletion(&f.admin, k).await.unwrap();
            }
            f.kms.enable_key(&f.admin, k).await.unwrap();
        }
        assert_eq!(
            f.kms
                .decrypt(&f.admin, &blob, &none, "", &[])
                .await
                .unwrap()
                .plaintext
                .as_slice(),
            b"x"
        );
        f.kms
            .re_encrypt(&f.admin, &other_blob, &none, "", &key, &none, &[])
            .await
            .unwrap();
        f.kms
            .verify_mac(&f.admin, &hmac, b"m", &tag, MacAlgorithm::HmacSha256, &[])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn disabled_and_pending_keys_refuse_crypto_and_deleted_keys_are_gone() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let none = EncryptionContext::new();
    let blob = f.blob(&key, b"x", &none).await;
    f.kms.disable_key(&f.admin, &key).await.unwrap();
    check_err(
        f.kms.encrypt(&f.admin, &key, b"x", &none, &[]).await,
        "DisabledException",
        &key,
    );
    check_err(
        f.kms.decrypt(&f.admin, &blob, &none, "", &[]).await,
        "DisabledException",
        &key,
    );
    f.kms.enable_key(&f.admin, &key).await.unwrap();
    let scheduled = f
        .kms
        .schedule_key_deletion(&f.admin, &key, Some(7))
        .await
        .unwrap();
    assert_eq!(scheduled.deletion_date, Some(T0 + 7 * DAY));
    check_err(
        f.kms.decrypt(&f.admin, &blob, &none, "", &[]).await,
        "KMSInvalidStateException",
        "pending deletion",
    );
    check_err(
        f.kms
            .generate_data_key(&f.admin, &key, &none, DataKeyLength::Aes128, &[])
            .await,
        "KMSInvalidStateException",
        "pending deletion",
    );
    check_err(
        f.kms.enable_key(&f.admin, &key).await,
        "KMSInvalidStateException",
        "cancel the deletion",
    );
    check_err(
        f.kms
            .create_grant(
                &f.admin,
                CreateGrantInput {
                    key_id: key.clone(),
                    grantee: "user/admin".into(),
                    retiring: None,
                    operations: vec![GrantOperation::Decrypt],
                    constraints: GrantConstraints::default(),
                    name: String::new(),
                    grant_tokens: vec![],
                },
            )
            .await,
        "KMSInvalidStateException",
        "pending deletion",
    );
    assert_eq!(
        f.kms.cancel_key_deletion(&f.admin, &key).await.unwrap(),
        key
    );
    assert_eq!(
        f.kms.describe_key(&f.admin, &key, &[]).await.unwrap().state,
        KeyState::Disabled
    );
    f.kms
        .schedule_key_deletion(&f.admin, &key, None)
        .await
        .unwrap();
    f.clock.advance(30 * DAY - 1);
    assert!(f.kms.run_maintenance().await.unwrap().destroyed.is_empty());
    f.clock.advance(1);
    assert_eq!(
        f.kms.run_maintenance().await.unwrap().destroyed,
        vec![key.clone()]
    );
    check_err(
        f.kms.describe_key(&f.admin, &key, &[]).await,
        "NotFoundException",
        &key,
    );
    check_err(
        f.kms.decrypt(&f.admin, &blob, &none, "", &[]).await,
        "InvalidCiphertextException",
        "",
    );
}

#[tokio::test]
async fn mac_keys_generate_and_verify_in_constant_time() {
    let f = fixture().await;
    for (spec, alg, len) in [
        (KeySpec::Hmac256, MacAlgorithm::HmacSha256, 32),
        (KeySpec::Hmac384, MacAlgorithm::HmacSha384, 48),
        (KeySpec::Hmac512, MacAlgorithm::HmacSha512, 64),
    ] {
        let key = f.key(spec).await;
        let (_, mac) = f
            .kms
            .generate_mac(&f.admin, &key, b"message", alg, &[])
            .await
            .unwrap();
        assert_eq!(mac.len(), len);
        assert!(
            f.kms
                .verify_mac(&f.admin, &key, b"message", &mac, alg, &[])
                .await
                .is_ok()
        );
        let mut bad = mac.clone();
        bad[0] ^= 1;
        check_err(
            f.kms
                .verify_mac(&f.admin, &key, b"message", &bad, alg, &[])
                .await,
            "KMSInvalidMacException",
            "",
        );
        check_err(
            f.kms
                .verify_mac(&f.admin, &key, b"other", &mac, alg, &[])
                .await,
            "KMSInvalidMacException",
            "",
        );
        check_err(
            f.kms
                .verify_mac(&f.admin, &key, b"message", &mac[..16], alg, &[])
                .await,
            "KMSInvalidMacException",
            "",
        );
    }
}

/// An alias is a resource of its own, as in AWS: CreateAlias, UpdateAlias
/// and DeleteAlias need the action on the alias (identity policies alone
/// decide it) and on each key involved (key policy). So an administrator
/// can give a team its own alias prefix, and nobody learns whether an
/// alias outside theirs exists.
#[tokio::test]
async fn alias_operations_are_decided_on_the_alias_and_on_the_key() {
    let f = fixture().await;
    f.kms
        .create_user(&f.admin, "dev", Some(PrincipalKind::User))
        .await
        .unwrap();
    let team = r#"{"Version":"2012-10-17","Statement":[
        {"Sid":"Keys","Effect":"Allow","Action":"kms:CreateKey","Resource":"*"},
        {"Sid":"TeamAliases","Effect":"Allow","Action":["kms:CreateAlias","kms:UpdateAlias","kms:DeleteAlias"],"Resource":"alias/team-a/*"},
        {"Sid":"Locked","Effect":"Deny","Action":"kms:*Alias","Resource":"alias/team-a/locked"}]}"#;
    f.kms
        .put_user_policy(&f.admin, "dev", "Team", team)
        .await
        .unwrap();
    let token = f
        .kms
        .create_access_token(&f.admin, "user/dev")
        .await
        .unwrap();
    let dev = creds(&token.token);
    // dev's own key: its default key policy gives dev every key action.
    let input = || CreateKeyInput {
        description: "dev's".into(),
        spec: KeySpec::SymmetricDefault,
        usage: None,
        policy: None,
        tags: vec![],
    };
    let own = f.kms.create_key(&dev, input()).await.unwrap().key_id;
    let own2 = f.kms.create_key(&dev, input()).await.unwrap().key_id;
    let admins = f.key(KeySpec::SymmetricDefault).await;

    f.kms
        .create_alias(&dev, "alias/team-a/orders", &own)
        .await
        .unwrap();
    // Outside the prefix: refused on the alias, whatever the key allows.
    check_err(
        f.kms.create_alias(&dev, "alias/orders", &own).await,
        "AccessDeniedException",
        "User: user/dev is not authorized to perform: kms:CreateAlias on resource: alias/orders",
    );
    check_err(
        f.kms.create_alias(&dev, "alias/team-a/locked", &own).await,
        "AccessDeniedException",
        "kms:CreateAlias on resource: alias/team-a/locked with an explicit deny",
    );
    // Inside the prefix, on a key dev may not manage: refused on the key.
    check_err(
        f.kms
            .create_alias(&dev, "alias/team-a/admins", &admins)
            .await,
        "AccessDeniedException",
        &format!("kms:CreateAlias on resource: key/{admins}"),
    );
    // An existing alias outside the prefix is not revealed: the refusal
    // comes before AlreadyExists and NotFound.
    f.kms
        .create_alias(&f.admin, "alias/admins", &admins)
        .await
        .unwrap();
    for result in [
        f.kms.create_alias(&dev, "alias/admins", &own).await,
        f.kms.update_alias(&dev, "alias/admins", &own).await,
        f.kms.delete_alias(&dev, "alias/admins").await,
        f.kms.delete_alias(&dev, "alias/never-made").await,
    ] {
        check_err(result, "AccessDeniedException", "on resource: alias/");
    }
    check_err(
        f.kms.delete_alias(&dev, "alias/team-a/never-made").await,
        "NotFoundException",
        "alias/team-a/never-made",
    );
    // UpdateAlias needs the action on both keys: pointing a team alias at
    // the administrator's key is refused, at dev's other key allowed.
    check_err(
        f.kms
            .update_alias(&dev, "alias/team-a/orders", &admins)
            .await,
        "AccessDeniedException",
        &format!("kms:UpdateAlias on resource: key/{admins}"),
    );
    f.kms
        .update_alias(&dev, "alias/team-a/orders", &own2)
        .await
        .unwrap();
    // A team alias on the administrator's key: dev may not take it away.
    f.kms
        .create_alias(&f.admin, "alias/team-a/admins", &admins)
        .await
        .unwrap();
    check_err(
        f.kms.delete_alias(&dev, "alias/team-a/admins").await,
        "AccessDeniedException",
        &format!("kms:DeleteAlias on resource: key/{admins}"),
    );
    f.kms
        .delete_alias(&dev, "alias/team-a/orders")
        .await
        .unwrap();
    let aliases: Vec<_> = f
        .kms
        .list_aliases(&f.admin, "", 0, "")
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|a| (a.alias_name, a.key_id))
        .collect();
    assert_eq!(
        aliases,
        [
            ("alias/admins".to_string(), admins.clone()),
            ("alias/team-a/admins".to_string(), admins.clone()),
        ]
    );

    // The records name the alias and the keys, with both decisions.
    let records = f.audit_lines();
    let of = |name: &str, decision: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| {
                r["event_name"] == name && r["principal"] == "user/dev" && r["decision"] == decision
            })
            .collect()
    };
    let created = of("CreateAlias", "Allow");
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0]["resources"],
        serde_json::json!(["alias/team-a/orders", format!("key/{own}")])
    );
    assert_eq!(
        created[0]["conditions"],
        serde_json::json!([{
            "action": "kms:CreateAlias",
            "resource": "alias/team-a/orders",
            "decision": "Allow",
            "matched_statements": ["identity:Team:TeamAliases"],
        }])
    );
    assert_eq!(
        created[0]["matched_statements"],
        serde_json::json!(["key-policy:AllowKeyCreatorFullControl"])
    );
    let updated = of("UpdateAlias", "Allow");
    assert_eq!(updated.len(), 1);
    assert_eq!(
        updated[0]["resources"],
        serde_json::json!([
            "alias/team-a/orders",
            format!("key/{own}"),
            format!("key/{own2}")
        ])
    );
    // Refused on the new key: the record still names the current one.
    let update_refused = of("UpdateAlias", "Deny");
    assert_eq!(
        update_refused
            .iter()
            .map(|r| r["resources"].clone())
            .collect::<Vec<_>>(),
        [
            serde_json::json!(["alias/admins"]),
            serde_json::json!([
                "alias/team-a/orders",
                format!("key/{own}"),
                format!("key/{admins}")
            ]),
        ]
    );
    let refused = of("CreateAlias", "Deny");
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert_eq!(refused[0]["resources"], serde_json::json!(["alias/orders"]));
    assert_eq!(refused[0]["matched_statements"], serde_json::json!([]));
    assert_eq!(
        refused[1]["matched_statements"],
        serde_json::json!(["identity:Team:Locked"])
    );
    assert_eq!(
        refused[1]["conditions"][0]["decision"],
        serde_json::json!("Deny")
    );
    // Refused on the key: the alias's allow stays in the record.
    assert_eq!(
        refused[2]["resources"],
        serde_json::json!(["alias/team-a/admins", format!("key/{admins}")])
    );
    assert_eq!(refused[2]["conditions"][0]["decision"], "Allow");
}

#[tokio::test]
async fn aliases_tags_and_listing() {
    let f = fixture().await;
    let a = f.key(KeySpec::SymmetricDefault).await;
    let b = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .create_alias(&f.admin, "alias/orders", &a)
        .await
        .unwrap();
    check_err(
        f.kms.create_alias(&f.admin, "alias/orders", &b).await,
        "AlreadyExistsException",
        "alias/orders",
    );
    let blob = f
        .kms
        .encrypt(
            &f.admin,
            "alias/orders",
            b"x",
            &EncryptionContext::new(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(blob.key_id, a);
    f.kms
        .update_alias(&f.admin, "alias/orders", &b)
        .await
        .unwrap();
    assert_eq!(
        f.kms
            .describe_key(&f.admin, "alias/orders", &[])
            .await
            .unwrap()
            .key_id,
        b
    );
    let aliases = f.kms.list_aliases(&f.admin, "", 0, "").await.unwrap();
    assert_eq!(aliases.items.len(), 1);
    f.kms.delete_alias(&f.admin, "alias/orders").await.unwrap();
    check_err(
        f.kms.describe_key(&f.admin, "alias/orders", &[]).await,
        "NotFoundException",
        "alias/orders",
    );
    f.kms
        .tag_resource(
            &f.admin,
            &a,
            &[("team".into(), "db".into()), ("env".into(), "prod".into())],
        )
        .await
        .unwrap();
    f.kms
        .untag_resource(&f.admin, &a, &["env".into()])
        .await
        .unwrap();
    let tags = f.kms.list_resource_tags(&f.admin, &a, 0, "").await.unwrap();
    assert_eq!(tags.items, vec![("team".to_string(), "db".to_string())]);
    // Pagination covers every key exactly once.
    for _ in 0..3 {
        f.key(KeySpec::SymmetricDefault).await;
    }
    let mut seen = Vec::new();
    let mut marker = String::new();
    loop {
        let page = f.kms.list_keys(&f.admin, 2, &marker).await.unwrap();
        seen.extend(page.items);
        match page.next_marker {
            Some(m) => marker = m,
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (5, 5));
}

#[tokio::test]
async fn key_policy_lockout_is_refused_and_users_without_rights_are_denied() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let lockout = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    let policy_before = f.kms.get_key_policy(&f.admin, &key, "").await.unwrap();
    check_err(
        f.kms.put_key_policy(&f.admin, &key, "", lockout).await,
        "MalformedPolicyDocumentException",
        "will not allow user/admin",
    );
    assert_eq!(
        f.kms.get_key_policy(&f.admin, &key, "").await.unwrap(),
        policy_before
    );
    // CreateKey makes the same check, and creates nothing when it fails.
    let keys = || async { f.kms.list_keys(&f.admin, 0, "").await.unwrap().items.len() };
    let before = keys().await;
    let with_policy = |policy: &str| CreateKeyInput {
        description: String::new(),
        spec: KeySpec::SymmetricDefault,
        usage: None,
        policy: Some(policy.to_string()),
        tags: vec![],
    };
    check_err(
        f.kms.create_key(&f.admin, with_policy(lockout)).await,
        "MalformedPolicyDocumentException",
        "will not allow user/admin to update the key policy",
    );
    assert_eq!(keys().await, before);
    let delegating = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"account"},"Action":"kms:*","Resource":"*"}]}"#;
    f.kms
        .create_key(&f.admin, with_policy(delegating))
        .await
        .unwrap();
    assert_eq!(keys().await, before + 1);
    let bob = f
        .user("bob", PrincipalKind::User, &["TableFullAccess"])
        .await;
    check_err(
        f.kms.describe_key(&bob, &key, &[]).await,
        "AccessDeniedException",
        "kms:DescribeKey",
    );
    check_err(
        f.kms
            .create_key(
                &bob,
                CreateKeyInput {
                    description: String::new(),
                    spec: KeySpec::SymmetricDefault,
                    usage: None,
                    policy: None,
                    tags: vec![],
                },
            )
            .await,
        "AccessDeniedException",
        "kms:CreateKey",
    );
    check_err(
        f.kms
            .create_user(&bob, "eve", Some(PrincipalKind::User))
            .await,
        "AccessDeniedException",
        "iam:CreateUser",
    );
    check_err(
        f.kms
            .attach_user_policy(&f.admin, "bob", "NoSuchPolicy")
            .await,
        "NotFoundException",
        "TableFullAccess",
    );
    check_err(
        f.kms.get_key_policy(&f.admin, &key, "other").await,
        "ValidationException",
        "default",
    );
    // Inline identity policy with an explicit deny wins over AdministratorAccess.
    let deny = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"kms:Decrypt","Resource":"*"}]}"#;
    let carol = f
        .user("carol", PrincipalKind::User, &["AdministratorAccess"])
        .await;
    let blob = f
        .kms
        .encrypt(&carol, &key, b"x", &EncryptionContext::new(), &[])
        .await
        .unwrap()
        .ciphertext_blob;
    f.kms
        .put_user_policy(&f.admin, "carol", "NoDecrypt", deny)
        .await
        .unwrap();
    check_err(
        f.kms
            .decrypt(&carol, &blob, &EncryptionContext::new(), "", &[])
            .await,
        "AccessDeniedException",
        "explicit deny",
    );
    check_err(
        f.kms.put_user_policy(&f.admin, "carol", "Bad", "{}").await,
        "MalformedPolicyDocumentException",
        "identity policy",
    );
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let root_path = dir.path().join("root.key");
    let root = Arc::new(SoftwareRootKey::create_file(&root_path).unwrap());
    let kms = open_at(dir.path(), root, clock.clone()).await;
    let admin = bootstrap_admin(&kms).await;
    let key = kms
        .create_key(
            &admin,
            CreateKeyInput {
                description: "d".into(),
                spec: KeySpec::SymmetricDefault,
                usage: None,
                policy: None,
                tags: vec![],
            },
        )
        .await
        .unwrap()
        .key_id;
    kms.create_alias(&admin, "alias/keep", &key).await.unwrap();
    kms.rotate_key_on_demand(&admin, &key).await.unwrap();
    let c = ctx(&[("k", "v")]);
    let blob = kms
        .encrypt(&admin, &key, b"persist", &c, &[])
        .await
        .unwrap()
        .ciphertext_blob;
    kms.create_user(&admin, "bob", Some(PrincipalKind::User))
        .await
        .unwrap();
    // The rest of what a key and a principal carry: a key policy that lets
    // bob decrypt, tags, a rotation schedule, a grant with a constraint, a
    // disabled key and one pending deletion; bob's inline and attached
    // policies, a live token and a revoked one.
    let bob_token = kms.create_access_token(&admin, "bob").await.unwrap();
    let revoked = kms.create_access_token(&admin, "bob").await.unwrap();
    kms.delete_access_token(&admin, "bob", &revoked.token_id)
        .await
        .unwrap();
    let bob = creds(&bob_token.token);
    let policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "user/admin"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Bob", "Effect": "Allow", "Principal": {"AWS": "user/bob"},
         "Action": "kms:Decrypt", "Resource": "*"}]})
    .to_string();
    kms.put_key_policy(&admin, &key, "default", &policy)
        .await
        .unwrap();
    kms.tag_resource(&admin, &key, &[("team".into(), "payments".into())])
        .await
        .unwrap();
    kms.enable_key_rotation(&admin, &key, Some(90))
        .await
        .unwrap();
    kms.create_grant(
        &admin,
        CreateGrantInput {
            key_id: key.clone(),
            grantee: "user/bob".into(),
            retiring: None,
            operations: vec![GrantOperation::Encrypt],
            constraints: GrantConstraints {
                equals: None,
                subset: Some(c.clone()),
            },
            name: "bob-encrypts".into(),
            grant_tokens: vec![],
        },
    )
    .await
    .unwrap();
    kms.put_user_policy(
        &admin,
        "bob",
        "Describe",
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeKey","Resource":"*"}]}"#,
    )
    .await
    .unwrap();
    kms.attach_user_policy(&admin, "bob", "TableReadOnlyAccess")
        .await
        .unwrap();
    let plain_key = async |kms: &Kms| {
        kms.create_key(
            &admin,
            CreateKeyInput {
                description: String::new(),
                spec: KeySpec::SymmetricDefault,
                usage: None,
                policy: None,
                tags: vec![],
            },
        )
        .await
        .unwrap()
        .key_id
    };
    let disabled = plain_key(&kms).await;
    kms.disable_key(&admin, &disabled).await.unwrap();
    let pending = plain_key(&kms).await;
    kms.schedule_key_deletion(&admin, &pending, Some(9))
        .await
        .unwrap();
    // Everything the API shows of them, before and after the restart.
    let keys = [key.clone(), disabled.clone(), pending.clone()];
    let snapshot = async |kms: &Kms| {
        let mut out = Vec::new();
        for k in &keys {
            out.push(format!("{:?}", kms.describe_key(&admin, k, &[]).await));
            out.push(format!(
                "{:?}",
                kms.get_key_policy(&admin, k, "default").await
            ));
            out.push(format!(
                "{:?}",
                kms.get_key_rotation_status(&admin, k).await
            ));
            out.push(format!(
                "{:?}",
                kms.list_key_rotations(&admin, k, 100, "").await
            ));
            out.push(format!(
                "{:?}",
                kms.list_resource_tags(&admin, k, 100, "").await
            ));
            out.push(format!(
                "{:?}",
                kms.list_grants(&admin, k, "", "", 100, "").await
            ));
        }
        out.push(format!("{:?}", kms.list_user_policies(&admin, "bob").await));
        out
    };
    let before = snapshot(&kms).await;
    assert!(
        before.iter().all(|line| !line.starts_with("Err")),
        "{before:#?}"
    );
    kms.audit_log().close().await.unwrap();
    drop(kms);

    let root = Arc::new(SoftwareRootKey::read_file(&root_path).unwrap());
    let kms = open_at(dir.path(), root, clock.clone()).await;
    assert_eq!(snapshot(&kms).await, before);
    for expected in [
        "Disabled",
        "PendingDeletion",
        "team",
        "payments",
        "bob-encrypts",
        "TableReadOnlyAccess",
        "Describe",
    ] {
        assert!(
            before.iter().any(|l| l.contains(expected)),
            "{expected} in {before:#?}"
        );
    }
    // bob's token still works, with bob's key permission; the revoked one
    // is still refused as revoked.
    assert_eq!(
        kms.decrypt(&bob, &blob, &c, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"persist"
    );
    check_err(
        kms.describe_key(&creds(&revoked.token), &key, &[]).await,
        "UnrecognizedClientException",
        "revoked",
    );
    assert!(
        kms.bootstrap_principal("user/admin", PrincipalKind::User, &[])
            .await
            .unwrap()
            .is_none()
    );
    let d = kms
        .decrypt(&admin, &blob, &c, "alias/keep", &[])
        .await
        .unwrap();
    assert_eq!(
        (d.plaintext.as_slice(), d.key_version),
        (&b"persist"[..], 2)
    );
    assert!(kms.get_user(&admin, "bob").await.is_ok());
    kms.audit_log().close().await.unwrap();
    drop(kms);

    // Another root key cannot open this store.
    let store = SqliteStore::open(&dir.path().join("kms.db")).unwrap();
    let wrong = Arc::new(SoftwareRootKey::generate());
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_for(audit_dir.path(), wrong.as_ref());
    check_err(
        Kms::open(Arc::new(store), wrong, audit, clock).map(drop),
        "KMSInternalException",
        "does not match",
    );
    crate::audit::verify(
        &dir.path().join("audit.jsonl"),
        Some(&dir.path().join("audit.jsonl.checkpoints")),
        None,
    )
    .expect("audit verifies across restarts");
}

/// A sink whose writes fail, standing for a full or broken audit disk.
struct FailingSink;

impl AuditSink for FailingSink {
    fn append(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }
    fn syncer(&self) -> std::io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(FailingSink))
    }
}

impl AuditSyncer for FailingSink {
    fn sync(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("disk full"))
    }
}

#[tokio::test]
async fn key_use_is_refused_when_the_audit_record_cannot_be_made_durable() {
    let clock = Arc::new(ManualClock::new(T0));
    let root = Arc::new(SoftwareRootKey::generate());
    // Prepare a key with a working audit log, then reopen the same store
    // with a failing one.
    let dir = tempfile::tempdir().unwrap();
    let kms = open_at(dir.path(), root.clone(), clock.clone()).await;
    let admin = bootstrap_admin(&kms).await;
    let key = kms
        .create_key(
            &admin,
            CreateKeyInput {
                description: String::new(),
                spec: KeySpec::SymmetricDefault,
                usage: None,
                policy: None,
                tags: vec![],
            },
        )
        .await
        .unwrap()
        .key_id;
    kms.audit_log().close().await.unwrap();
    drop(kms);
    let store = SqliteStore::open(&dir.path().join("kms.db")).unwrap();
    let audit = AuditLog::with_sink(
        Box::new(FailingSink),
        None,
        ChainHead::GENESIS,
        Batching::max_batch(16),
    )
    .unwrap();
    let kms = Kms::open(Arc::new(store), root.clone(), audit, clock.clone()).unwrap();
    // A change whose record cannot be made durable is refused and never
    // stored, and nothing after it is acknowledged.
    check_err(
        kms.update_key_description(&admin, &key, "changed without a record")
            .await,
        "KMSUnavailableException",
        "audit log",
    );
    check_err(
        kms.create_user(&admin, "mallory", None).await,
        "KMSUnavailableException",
        "",
    );
    check_err(
        kms.encrypt(&admin, &key, b"x", &EncryptionContext::new(), &[])
            .await,
        "KMSUnavailableException",
        "audit log",
    );
    check_err(
        kms.generate_data_key(
            &admin,
            &key,
            &EncryptionContext::new(),
            DataKeyLength::Aes256,
            &[],
        )
        .await,
        "KMSUnavailableException",
        "audit log",
    );
    check_err(
        kms.describe_key(&admin, &key, &[]).await,
        "KMSUnavailableException",
        "audit log",
    );
    drop(kms);
    let kms = open_at(dir.path(), root, clock).await;
    assert_eq!(
        kms.describe_key(&admin, &key, &[])
            .await
            .unwrap()
            .description,
        ""
    );
    check_err(
        kms.get_user(&admin, "mallory").await,
        "NotFoundException",
        "mallory",
    );
}

/// A change is held until its record is durable; a caller that goes away
/// meanwhile (a cancelled request) must not leave it held, or every later
/// change would wait behind it for ever.
#[tokio::test]
async fn a_cancelled_change_is_still_recorded_and_committed() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    {
        // Polled once, then dropped: the request's future goes away while
        // the call waits for its record.
        let mut call = std::pin::pin!(f.kms.update_key_description(&f.admin, &key, "first"));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the call ended at its first poll");
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        f.kms.update_key_description(&f.admin, &key, "second"),
    )
    .await
    .expect("a later change is not held behind the cancelled one")
    .unwrap();
    assert_eq!(
        f.kms
            .describe_key(&f.admin, &key, &[])
            .await
            .unwrap()
            .description,
        "second"
    );
    let updates = f
        .audit_lines()
        .iter()
        .filter(|r| r["event_name"] == "UpdateKeyDescription" && r["decision"] == "Allow")
        .count();
    assert_eq!(updates, 2);
}

/// A call whose work panics after queueing a change never writes its
/// record, so the change is abandoned and the service refuses everything
/// (memory is ahead of what may be stored) rather than storing it.
#[tokio::test]
async fn a_change_whose_call_panics_is_abandoned() {
    let f = Arc::new(fixture().await);
    let key = f.key(KeySpec::SymmetricDefault).await;
    let task = {
        let (f, key) = (f.clone(), key.clone());
        tokio::spawn(async move {
            f.kms
                .run::<()>(&f.admin, "UpdateKeyDescription", |ctx| {
                    ctx.write(|_, state| {
                        let mut record = state.keys[&key].record.clone();
                        record.description = "never recorded".into();
                        Ok(((), vec![Mutation::PutKey(record)]))
                    })?;
                    panic!("work failed after queueing its change");
                })
                .await
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    let patience = std::time::Duration::from_secs(10);
    check_err(
        tokio::time::timeout(
            patience,
            f.kms.update_key_description(&f.admin, &key, "later"),
        )
        .await
        .expect("refused, not held behind the abandoned change"),
        "KMSUnavailableException",
        "",
    );
    check_err(
        tokio::time::timeout(patience, f.kms.describe_key(&f.admin, &key, &[]))
            .await
            .expect("refused, not held"),
        "KMSUnavailableException",
        "",
    );
}

/// An audit sink whose every sync takes 20 ms: records sealed meanwhile
/// share the next one, so the number of syncs shows whether records were
/// sealed together or each waited for the previous one's sync.
struct SlowSink;

impl AuditSink for SlowSink {
    fn append(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(())
    }
    fn syncer(&self) -> std::io::Result<Box<dyn AuditSyncer>> {
        Ok(Box::new(SlowSink))
    }
}

impl AuditSyncer for SlowSink {
    fn sync(&mut self) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(())
    }
}

/// A maintenance pass that rotates many keys records them all and holds
/// their changes until then, but seals every record before waiting for
/// any, so they share syncs instead of taking one each (every request
/// waits behind the held changes meanwhile).
#[tokio::test]
async fn maintenance_records_many_rotations_with_few_syncs() {
    let clock = Arc::new(ManualClock::new(T0));
    let root = Arc::new(SoftwareRootKey::generate());
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("kms.db")).unwrap();
    let audit = AuditLog::with_sink(
        Box::new(SlowSink),
        None,
        ChainHead::GENESIS,
        Batching::max_batch(1024),
    )
    .unwrap();
    let kms = Kms::open(Arc::new(store), root, audit, clock.clone()).unwrap();
    let admin = bootstrap_admin(&kms).await;
    let mut keys = Vec::new();
    for _ in 0..40 {
        let input = CreateKeyInput {
            description: String::new(),
            spec: KeySpec::SymmetricDefault,
            usage: None,
            policy: None,
            tags: vec![],
        };
        let key = kms.create_key(&admin, input).await.unwrap().key_id;
        kms.enable_key_rotation(&admin, &key, Some(90))
            .await
            .unwrap();
        keys.push(key);
    }
    clock.advance(90 * DAY);
    let before = kms.audit_log().stats();
    let mut rotated = kms.run_maintenance().await.unwrap().rotated;
    let after = kms.audit_log().stats();
    rotated.sort();
    keys.sort();
    assert_eq!(rotated, keys);
    assert_eq!(after.records_durable - before.records_durable, 40);
    // One after another would be 40 syncs (800 ms); sealed together, the
    // first sync takes one record or a few, the next all the rest.
    assert!(
        after.syncs - before.syncs <= 4,
        "{} syncs for one pass of 40 rotations",
        after.syncs - before.syncs
    );
}

#[tokio::test]
async fn concurrent_requests_all_get_durable_audit_records() {
    let f = Arc::new(fixture().await);
    let key = f.key(KeySpec::SymmetricDefault).await;
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let f = f.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let c = BTreeMap::from([("i".to_string(), i.to_string())]);
            let e = f.kms.encrypt(&f.admin, &key, &[i], &c, &[]).await.unwrap();
            f.kms
                .decrypt(&f.admin, &e.ciphertext_blob, &c, "", &[])
                .await
                .unwrap()
                .plaintext
                .to_vec()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), vec![i as u8]);
    }
    let lines = f.audit_lines();
    let decrypts = lines
        .iter()
        .filter(|r| r["event_name"] == "Decrypt")
        .count();
    assert_eq!(decrypts, 64);
    let seqs: Vec<u64> = lines
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// `kms:RequestAlias` is the alias a request named its key by (absent when
/// it used the key id), and `kms:KeySpec` the key's spec: a Deny on either
/// applies, rather than silently never matching.
#[tokio::test]
async fn request_alias_and_key_spec_conditions_are_set() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let mac_key = f.key(KeySpec::Hmac256).await;
    f.kms
        .create_alias(&f.admin, "alias/legacy-orders", &key)
        .await
        .unwrap();
    f.kms
        .create_alias(&f.admin, "alias/current-orders", &key)
        .await
        .unwrap();
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"Bob","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey","kms:GenerateMac"],"Resource":"*"},
      {"Sid":"NoLegacyAlias","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
       "Condition":{"StringLike":{"kms:RequestAlias":"alias/legacy-*"}}},
      {"Sid":"NoSymmetricDescribe","Effect":"Deny","Principal":{"AWS":"user/bob"},"Action":"kms:DescribeKey","Resource":"*",
       "Condition":{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT"}}}]}"#;
    for k in [&key, &mac_key] {
        f.kms
            .put_key_policy(&f.admin, k, "default", policy)
            .await
            .unwrap();
    }
    let c = ctx(&[("t", "1")]);
    check_err(
        f.kms
            .encrypt(&bob, "alias/legacy-orders", b"x", &c, &[])
            .await,
        "AccessDeniedException",
        "explicit deny",
    );
    let blob = f
        .kms
        .encrypt(&bob, "alias/current-orders", b"x", &c, &[])
        .await
        .expect("another alias of the same key")
        .ciphertext_blob;
    f.kms
        .encrypt(&bob, &key, b"x", &c, &[])
        .await
        .expect("the key id");
    // Decrypt: the alias is the one the request names, if any.
    check_err(
        f.kms
            .decrypt(&bob, &blob, &c, "alias/legacy-orders", &[])
            .await,
        "AccessDeniedException",
        "explicit deny",
    );
    f.kms
        .decrypt(&bob, &blob, &c, "", &[])
        .await
        .expect("no key named");
    check_err(
        f.kms.describe_key(&bob, &key, &[]).await,
        "AccessDeniedException",
        "explicit deny",
    );
    f.kms
        .describe_key(&bob, &mac_key, &[])
        .await
        .expect("an HMAC key is not SYMMETRIC_DEFAULT");
    // kms:GrantIsForAWSResource is false on every CreateGrant.
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"OnlyForAwsResources","Effect":"Deny","Principal":"*","Action":"kms:CreateGrant","Resource":"*",
       "Condition":{"Bool":{"kms:GrantIsForAWSResource":"false"}}}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    check_err(
        f.kms
            .create_grant(
                &f.admin,
                CreateGrantInput {
                    key_id: key.clone(),
                    grantee: "user/bob".into(),
                    retiring: None,
                    operations: vec![GrantOperation::Decrypt],
                    constraints: GrantConstraints::default(),
                    name: String::new(),
                    grant_tokens: vec![],
                },
            )
            .await,
        "AccessDeniedException",
        "explicit deny",
    );
}

/// `alias/table-service` belongs to the key kms-service creates for
/// table-service: nobody may create or re-point it through the API, and a
/// start-up finding the alias on a key kms-service did not create refuses
/// to adopt that key.
#[tokio::test]
async fn service_managed_aliases_are_reserved() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    check_err(
        f.kms
            .create_alias(&f.admin, "alias/table-service", &key)
            .await,
        "ValidationException",
        "reserved for the service-managed key",
    );
    let created = f
        .kms
        .bootstrap_service_managed_key("alias/table-service", "service/table-service")
        .await
        .unwrap()
        .expect("created");
    check_err(
        f.kms
            .update_alias(&f.admin, "alias/table-service", &key)
            .await,
        "ValidationException",
        "reserved",
    );
    // Its key's policy lets nobody manage it; the alias is refused beyond.
    check_err(
        f.kms.delete_alias(&f.admin, "alias/table-service").await,
        "AccessDeniedException",
        "kms:DeleteAlias",
    );
    assert_eq!(
        f.kms
            .bootstrap_service_managed_key("alias/table-service", "service/table-service")
            .await
            .unwrap(),
        None,
        "found, not created again"
    );
    assert_eq!(
        f.kms
            .describe_key(&f.admin, "alias/table-service", &[])
            .await
            .unwrap()
            .key_id,
        created
    );
    // An alias of that kind on somebody's own key is not adopted.
    f.kms
        .create_alias(&f.admin, "alias/squatted", &key)
        .await
        .unwrap();
    check_err(
        f.kms
            .bootstrap_service_managed_key("alias/squatted", "service/table-service")
            .await,
        "KMSInvalidStateException",
        "which kms-service did not create",
    );
}

/// Deleting a principal deletes the grants made to it, so a principal later
/// created under the same name does not inherit them.
#[tokio::test]
async fn a_deleted_principals_grants_go_with_it() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("t", "1")]);
    let blob = f.blob(&key, b"secret", &c).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let grant = |grantee: &str| CreateGrantInput {
        key_id: key.clone(),
        grantee: grantee.into(),
        retiring: None,
        operations: vec![GrantOperation::Decrypt],
        constraints: GrantConstraints::default(),
        name: String::new(),
        grant_tokens: vec![],
    };
    f.kms
        .create_grant(&f.admin, grant("user/bob"))
        .await
        .unwrap();
    let carol_grant = f
        .kms
        .create_grant(&f.admin, grant("user/carol"))
        .await
        .unwrap();
    f.kms
        .decrypt(&bob, &blob, &c, "", &[])
        .await
        .expect("granted");
    f.kms.delete_user(&f.admin, "bob").await.unwrap();
    let listed = f
        .kms
        .list_grants(&f.admin, &key, "", "", 0, "")
        .await
        .unwrap();
    let ids: Vec<&str> = listed.items.iter().map(|g| g.grant_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![carol_grant.grant_id.as_str()],
        "only carol's grant is left"
    );
    let new_bob = f.user("bob", PrincipalKind::User, &[]).await;
    check_err(
        f.kms.decrypt(&new_bob, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
}

#[test]
fn credentials_never_show_their_tokens_in_debug_output() {
    let c = Credentials {
        authorization: Some("Bearer lbx_secret-one".into()),
        on_behalf_of: Some("Bearer lbx_secret-two".into()),
        request_id: "req-1".into(),
        source_address: Some("10.0.0.1:5".into()),
        ..Credentials::default()
    };
    let shown = format!("{c:?} {c:#?}");
    assert!(!shown.contains("lbx_secret"), "{shown}");
    assert!(
        shown.contains("<redacted>") && shown.contains("req-1"),
        "{shown}"
    );
    let none = format!("{:?}", Credentials::default());
    assert!(none.contains("authorization: None"), "{none}");
}

/// The principals of a page of ListUsers, in order.
fn principals(page: &Page<PrincipalRecord>) -> Vec<&str> {
    page.items.iter().map(|p| p.principal.as_str()).collect()
}

/// ListUsers lists every principal once, in name order, a page at a time;
/// only a caller allowed iam:ListUsers may list them.
#[tokio::test]
async fn list_users_pages_through_every_principal() {
    let f = fixture().await;
    for (name, kind) in [
        ("carol", PrincipalKind::User),
        ("bob", PrincipalKind::User),
        ("table-service", PrincipalKind::Service),
    ] {
        f.kms.create_user(&f.admin, name, Some(kind)).await.unwrap();
    }
    let all = f.kms.list_users(&f.admin, 0, "").await.unwrap();
    assert_eq!(
        principals(&all),
        [
            "service/table-service",
            "user/admin",
            "user/bob",
            "user/carol"
        ]
    );
    assert_eq!(all.next_marker, None);
    assert_eq!(
        all.items
            .iter()
            .map(|p| (p.kind, p.created))
            .collect::<Vec<_>>(),
        [
            (PrincipalKind::Service, T0),
            (PrincipalKind::User, T0),
            (PrincipalKind::User, T0),
            (PrincipalKind::User, T0),
        ]
    );
    let first = f.kms.list_users(&f.admin, 3, "").await.unwrap();
    assert_eq!(
        principals(&first),
        ["service/table-service", "user/admin", "user/bob"]
    );
    assert_eq!(first.next_marker.as_deref(), Some("user/bob"));
    let second = f.kms.list_users(&f.admin, 3, "user/bob").await.unwrap();
    assert_eq!(principals(&second), ["user/carol"]);
    assert_eq!(second.next_marker, None);
    // A page that ends exactly at the last principal says there is no more.
    let exact = f.kms.list_users(&f.admin, 4, "").await.unwrap();
    assert_eq!((exact.items.len(), exact.next_marker), (4, None));
    check_err(
        f.kms.list_users(&f.admin, 1001, "").await,
        "ValidationException",
        "limit 1001",
    );
    let dave = f
        .user("dave", PrincipalKind::User, &["TableFullAccess"])
        .await;
    check_err(
        f.kms.list_users(&dave, 0, "").await,
        "AccessDeniedException",
        "User: user/dave is not authorized to perform: iam:ListUsers on resource: *",
    );
    // A deleted principal is no longer listed.
    f.kms.delete_user(&f.admin, "bob").await.unwrap();
    let after = f.kms.list_users(&f.admin, 0, "").await.unwrap();
    assert_eq!(
        principals(&after),
        [
            "service/table-service",
            "user/admin",
            "user/carol",
            "user/dave"
        ]
    );
}

/// Detaching a managed policy takes away what it allowed, at once; a
/// policy that is not attached (or does not exist) cannot be detached.
#[tokio::test]
async fn detach_user_policy_takes_away_what_it_allowed() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("t", "1")]);
    let carol = f
        .user(
            "carol",
            PrincipalKind::User,
            &["AdministratorAccess", "TableReadOnlyAccess"],
        )
        .await;
    // The default key policy delegates to identity policies.
    let blob = f
        .kms
        .encrypt(&carol, &key, b"x", &c, &[])
        .await
        .expect("AdministratorAccess allows Encrypt")
        .ciphertext_blob;
    let attached = |r: PrincipalRecord| r.attached.into_iter().collect::<Vec<_>>();
    assert_eq!(
        attached(f.kms.list_user_policies(&f.admin, "carol").await.unwrap()),
        ["AdministratorAccess", "TableReadOnlyAccess"]
    );
    f.kms
        .detach_user_policy(&f.admin, "carol", "AdministratorAccess")
        .await
        .unwrap();
    assert_eq!(
        attached(f.kms.list_user_policies(&f.admin, "carol").await.unwrap()),
        ["TableReadOnlyAccess"]
    );
    check_err(
        f.kms.encrypt(&carol, &key, b"x", &c, &[]).await,
        "AccessDeniedException",
        &format!(
            "User: user/carol is not authorized to perform: kms:Encrypt on resource: key/{key} because no identity-based policy allows the kms:Encrypt action"
        ),
    );
    check_err(
        f.kms.decrypt(&carol, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    check_err(
        f.kms.list_users(&carol, 0, "").await,
        "AccessDeniedException",
        "iam:ListUsers",
    );
    // GetUser shows the same attachments.
    let shown = f.kms.get_user(&f.admin, "carol").await.unwrap();
    assert_eq!(
        shown.attached.into_iter().collect::<Vec<_>>(),
        ["TableReadOnlyAccess"]
    );
    // Not attached (any more, or ever), or no such policy at all.
    for name in ["AdministratorAccess", "TableFullAccess", "NoSuchPolicy"] {
        check_err(
            f.kms.detach_user_policy(&f.admin, "carol", name).await,
            "NotFoundException",
            &format!("policy {name} is not attached to user/carol"),
        );
    }
    check_err(
        f.kms
            .detach_user_policy(&f.admin, "nobody", "TableReadOnlyAccess")
            .await,
        "NotFoundException",
        "principal user/nobody does not exist",
    );
    // carol may not detach her own policies (she no longer has the rights).
    check_err(
        f.kms
            .detach_user_policy(&carol, "carol", "TableReadOnlyAccess")
            .await,
        "AccessDeniedException",
        "iam:DetachUserPolicy on resource: user/carol",
    );
    assert_eq!(
        attached(f.kms.list_user_policies(&f.admin, "carol").await.unwrap()),
        ["TableReadOnlyAccess"],
        "refused detaches changed nothing"
    );
    // Attached again, the access is back.
    f.kms
        .attach_user_policy(&f.admin, "carol", "AdministratorAccess")
        .await
        .unwrap();
    f.kms
        .decrypt(&carol, &blob, &c, "", &[])
        .await
        .expect("reattached");
}

/// The names of a principal's inline policies.
fn inline_names(record: &PrincipalRecord) -> Vec<&str> {
    record.inline.keys().map(String::as_str).collect()
}

/// Deleting an inline policy takes away what it allowed; ListUserPolicies
/// names the inline policies left; a policy that is not there cannot be
/// deleted.
#[tokio::test]
async fn delete_user_policy_takes_away_what_it_allowed() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("t", "1")]);
    let dev = f
        .user("dev", PrincipalKind::User, &["TableReadOnlyAccess"])
        .await;
    let use_keys = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Use","Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}"#;
    let describe = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kms:DescribeKey","Resource":"*"}]}"#;
    assert!(
        f.kms
            .list_user_policies(&f.admin, "dev")
            .await
            .unwrap()
            .inline
            .is_empty()
    );
    f.kms
        .put_user_policy(&f.admin, "dev", "UseKeys", use_keys)
        .await
        .unwrap();
    f.kms
        .put_user_policy(&f.admin, "dev", "Describe", describe)
        .await
        .unwrap();
    let listed = f.kms.list_user_policies(&f.admin, "dev").await.unwrap();
    assert_eq!(inline_names(&listed), ["Describe", "UseKeys"]);
    assert_eq!(listed.inline["UseKeys"], use_keys);
    assert_eq!(
        listed
            .attached
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["TableReadOnlyAccess"]
    );
    let blob = f
        .kms
        .encrypt(&dev, &key, b"x", &c, &[])
        .await
        .expect("UseKeys allows Encrypt")
        .ciphertext_blob;
    f.kms
        .delete_user_policy(&f.admin, "dev", "UseKeys")
        .await
        .unwrap();
    assert_eq!(
        inline_names(&f.kms.list_user_policies(&f.admin, "dev").await.unwrap()),
        ["Describe"]
    );
    check_err(
        f.kms.encrypt(&dev, &key, b"x", &c, &[]).await,
        "AccessDeniedException",
        &format!(
            "User: user/dev is not authorized to perform: kms:Encrypt on resource: key/{key} because no identity-based policy allows the kms:Encrypt action"
        ),
    );
    check_err(
        f.kms.decrypt(&dev, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // The policy left still allows.
    assert_eq!(
        f.kms.describe_key(&dev, &key, &[]).await.unwrap().key_id,
        key
    );
    for name in ["UseKeys", "NeverMade"] {
        check_err(
            f.kms.delete_user_policy(&f.admin, "dev", name).await,
            "NotFoundException",
            &format!("user/dev has no inline policy {name}"),
        );
    }
    check_err(
        f.kms
            .delete_user_policy(&f.admin, "nobody", "Describe")
            .await,
        "NotFoundException",
        "principal user/nobody does not exist",
    );
    // dev may not delete its own policies, nor list another's.
    check_err(
        f.kms.delete_user_policy(&dev, "dev", "Describe").await,
        "AccessDeniedException",
        "iam:DeleteUserPolicy on resource: user/dev",
    );
    check_err(
        f.kms.list_user_policies(&dev, "admin").await,
        "AccessDeniedException",
        "iam:ListUserPolicies on resource: user/admin",
    );
    check_err(
        f.kms.list_user_policies(&f.admin, "nobody").await,
        "NotFoundException",
        "principal user/nobody does not exist",
    );
    assert_eq!(
        inline_names(&f.kms.list_user_policies(&f.admin, "dev").await.unwrap()),
        ["Describe"],
        "refused deletes changed nothing"
    );
}

/// ListPolicies lists the managed policies that ship with the product, each
/// one a valid identity policy that AttachUserPolicy accepts.
#[tokio::test]
async fn list_policies_lists_every_managed_policy() {
    let f = fixture().await;
    let listed = f.kms.list_policies(&f.admin).await.unwrap();
    let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "AdministratorAccess",
            "TableFullAccess",
            "TableReadOnlyAccess",
            "KeyAdministratorAccess"
        ]
    );
    f.kms
        .create_user(&f.admin, "bob", Some(PrincipalKind::User))
        .await
        .unwrap();
    for (name, text) in &listed {
        crate::policy::PolicyDocument::parse(text, crate::policy::PolicyKind::Identity)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        f.kms
            .attach_user_policy(&f.admin, "bob", name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let mut attached: Vec<String> = f
        .kms
        .list_user_policies(&f.admin, "bob")
        .await
        .unwrap()
        .attached
        .into_iter()
        .collect();
    attached.sort();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(attached, expected);
    // What each says: administrators may do anything, table policies only
    // table actions, the key administrator manages keys but may not use them.
    let text = |name: &str| listed.iter().find(|(n, _)| *n == name).unwrap().1;
    assert!(text("AdministratorAccess").contains(r#""Action": "*""#));
    assert!(text("TableFullAccess").contains(r#""Action": "table:*""#));
    assert!(!text("TableReadOnlyAccess").contains("table:PutItem"));
    let key_admin = text("KeyAdministratorAccess");
    assert!(key_admin.contains("kms:Create*") && key_admin.contains("kms:ScheduleKeyDeletion"));
    for use_action in ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"] {
        assert!(!key_admin.contains(use_action), "{use_action}");
    }
    let dave = f
        .user("dave", PrincipalKind::User, &["TableFullAccess"])
        .await;
    check_err(
        f.kms.list_policies(&dave).await,
        "AccessDeniedException",
        "User: user/dave is not authorized to perform: iam:ListPolicies on resource: *",
    );
}

/// DisableKeyRotation turns automatic rotation off: the status says so and
/// maintenance no longer rotates the key. An HMAC key is refused, as
/// EnableKeyRotation refuses it, and so is a caller not allowed the action.
#[tokio::test]
async fn disable_key_rotation_turns_automatic_rotation_off() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let hmac = f.key(KeySpec::Hmac256).await;
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(180))
        .await
        .unwrap();
    let on = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(
        (on.enabled, on.period_days, on.next_rotation),
        (true, 180, Some(T0 + 180 * DAY))
    );
    // Someone without the right cannot turn it off.
    let bob = f
        .user("bob", PrincipalKind::User, &["TableFullAccess"])
        .await;
    check_err(
        f.kms.disable_key_rotation(&bob, &key).await,
        "AccessDeniedException",
        &format!("kms:DisableKeyRotation on resource: key/{key}"),
    );
    assert_eq!(
        f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap(),
        on
    );
    f.kms.disable_key_rotation(&f.admin, &key).await.unwrap();
    let off = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(
        off,
        RotationStatus {
            key_id: key.clone(),
            enabled: false,
            period_days: 0,
            next_rotation: None,
        }
    );
    let described = f.kms.describe_key(&f.admin, &key, &[]).await.unwrap();
    assert_eq!(
        (described.rotation_period_days, described.next_rotation),
        (None, None)
    );
    // When rotation was due, nothing rotates.
    f.clock.advance(181 * DAY);
    assert!(f.kms.run_maintenance().await.unwrap().rotated.is_empty());
    assert!(
        f.kms
            .list_key_rotations(&f.admin, &key, 0, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Disabling it again is harmless; enabling it again starts a new period.
    f.kms.disable_key_rotation(&f.admin, &key).await.unwrap();
    f.kms
        .enable_key_rotation(&f.admin, &key, None)
        .await
        .unwrap();
    let again = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(
        (again.enabled, again.period_days, again.next_rotation),
        (true, 365, Some(T0 + 181 * DAY + 365 * DAY))
    );
    // HMAC keys: refused, like EnableKeyRotation, and the status stays off.
    for result in [
        f.kms.disable_key_rotation(&f.admin, &hmac).await,
        f.kms.enable_key_rotation(&f.admin, &hmac, None).await,
    ] {
        check_err(
            result,
            "UnsupportedOperationException",
            &format!(
                "automatic rotation is only supported for SYMMETRIC_DEFAULT keys; key {hmac} is HMAC_256"
            ),
        );
    }
    let hmac_status = f
        .kms
        .get_key_rotation_status(&f.admin, &hmac)
        .await
        .unwrap();
    assert_eq!((hmac_status.enabled, hmac_status.period_days), (false, 0));
    check_err(
        f.kms
            .disable_key_rotation(&f.admin, "00000000-0000-0000-0000-000000000000")
            .await,
        "NotFoundException",
        "does not exist",
    );
}

/// GenerateDataKeyWithoutPlaintext returns only the wrapped data key: it
/// decrypts, under the same context, to a key of the length asked for, and
/// under no other context. It is its own action in policies.
#[tokio::test]
async fn generate_data_key_without_plaintext_wraps_a_key_of_the_asked_length() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let c = ctx(&[("table", "orders"), ("column", "card")]);
    for (length, bytes) in [
        (DataKeyLength::Aes128, 16),
        (DataKeyLength::Aes256, 32),
        (DataKeyLength::Bytes(7), 7),
    ] {
        let wrapped = f
            .kms
            .generate_data_key_without_plaintext(&f.admin, &key, &c, length, &[])
            .await
            .unwrap();
        assert_eq!(
            (
                wrapped.key_id.as_str(),
                wrapped.key_version,
                &wrapped.source
            ),
            (key.as_str(), 1, &None)
        );
        let opened = f
            .kms
            .decrypt(&f.admin, &wrapped.ciphertext_blob, &c, "", &[])
            .await
            .unwrap();
        assert_eq!(opened.plaintext.len(), bytes, "{length:?}");
        assert_eq!(opened.key_id, key);
        // Another data key of the same length is another key.
        let other = f
            .kms
            .generate_data_key_without_plaintext(&f.admin, &key, &c, length, &[])
            .await
            .unwrap();
        assert_ne!(other.ciphertext_blob, wrapped.ciphertext_blob);
        let other_plain = f
            .kms
            .decrypt(&f.admin, &other.ciphertext_blob, &c, "", &[])
            .await
            .unwrap();
        if bytes >= 16 {
            assert_ne!(
                other_plain.plaintext.as_slice(),
                opened.plaintext.as_slice()
            );
        }
        for wrong in [
            ctx(&[("table", "orders")]),
            ctx(&[("table", "orders"), ("column", "name")]),
            ctx(&[("table", "orders"), ("column", "card"), ("x", "y")]),
            EncryptionContext::new(),
        ] {
            check_err(
                f.kms
                    .decrypt(&f.admin, &wrapped.ciphertext_blob, &wrong, "", &[])
                    .await,
                "InvalidCiphertextException",
                "",
            );
        }
    }
    // The record names the operation and holds the context, never a key.
    let last = f.last_record(|r| r["event_name"] == "GenerateDataKeyWithoutPlaintext");
    assert_eq!(last["decision"], "Allow");
    assert_eq!(last["key_id"], key.as_str());
    assert_eq!(
        last["encryption_context"],
        serde_json::json!({"table": "orders", "column": "card"})
    );
    // A key policy that allows GenerateDataKey does not allow it.
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"Bob","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":["kms:GenerateDataKey","kms:Decrypt"],"Resource":"*"}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    check_err(
        f.kms
            .generate_data_key_without_plaintext(&bob, &key, &c, DataKeyLength::Aes256, &[])
            .await,
        "AccessDeniedException",
        &format!(
            "User: user/bob is not authorized to perform: kms:GenerateDataKeyWithoutPlaintext on resource: key/{key}"
        ),
    );
    assert_eq!(
        f.kms
            .generate_data_key(&bob, &key, &c, DataKeyLength::Aes256, &[])
            .await
            .unwrap()
            .plaintext
            .len(),
        32
    );
}

/// `kms:CallerPrincipal` is the principal the call is decided for: the
/// caller, or the end caller a service forwards (never the service).
#[tokio::test]
async fn caller_principal_condition_is_the_end_caller() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"OnlyBob","Effect":"Allow","Principal":"*","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*",
       "Condition":{"StringEquals":{"kms:CallerPrincipal":"user/bob"}}},
      {"Sid":"NoTesters","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
       "Condition":{"StringLike":{"kms:CallerPrincipal":"user/test-*"}}}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    let c = ctx(&[("t", "1")]);
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let carol = f.user("carol", PrincipalKind::User, &[]).await;
    let tester = f
        .user("test-1", PrincipalKind::User, &["AdministratorAccess"])
        .await;
    let svc = f.user("table-service", PrincipalKind::Service, &[]).await;
    let via = |user: &Credentials| Credentials {
        on_behalf_of: user.authorization.clone(),
        ..svc.clone()
    };
    let blob = f
        .kms
        .encrypt(&bob, &key, b"bob's", &c, &[])
        .await
        .expect("bob is the caller principal")
        .ciphertext_blob;
    f.kms
        .decrypt(&via(&bob), &blob, &c, "", &[])
        .await
        .expect("bob via the service is still bob");
    for (who, principal) in [
        (&carol, "user/carol"),
        (&via(&carol), "user/carol"),
        (&svc, "service/table-service"),
    ] {
        check_err(
            f.kms.decrypt(who, &blob, &c, "", &[]).await,
            "AccessDeniedException",
            &format!(
                "User: {principal} is not authorized to perform: kms:Decrypt on resource: key/{key} because no"
            ),
        );
    }
    // The Deny matches the tester whatever else allows it.
    check_err(
        f.kms.decrypt(&tester, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        &format!(
            "User: user/test-1 is not authorized to perform: kms:Decrypt on resource: key/{key} with an explicit deny"
        ),
    );
    let denied = f.last_record(|r| r["event_name"] == "Decrypt" && r["principal"] == "user/test-1");
    assert_eq!(
        denied["matched_statements"],
        serde_json::json!(["key-policy:NoTesters"])
    );
}

/// `kms:EncryptionContext:<k>` holds the request's context values and
/// `kms:EncryptionContextKeys` its keys, in key policies and identity
/// policies alike: a context that does not match is refused, for Encrypt,
/// GenerateDataKey and Decrypt.
#[tokio::test]
async fn encryption_context_conditions_decide_key_use() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"Delegate","Effect":"Allow","Principal":{"AWS":"account"},"Action":"kms:*","Resource":"*"},
      {"Sid":"BobAcmeOnly","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":["kms:Encrypt","kms:Decrypt","kms:GenerateDataKey"],"Resource":"*",
       "Condition":{"StringEquals":{"kms:EncryptionContext:tenant":"acme"}}}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let acme = ctx(&[("tenant", "acme")]);
    let acme_and_more = ctx(&[("tenant", "acme"), ("table", "orders")]);
    let blob = f
        .kms
        .encrypt(&bob, &key, b"x", &acme, &[])
        .await
        .expect("the matching value")
        .ciphertext_blob;
    f.kms
        .encrypt(&bob, &key, b"x", &acme_and_more, &[])
        .await
        .expect("other pairs besides do not matter");
    assert_eq!(
        f.kms
            .decrypt(&bob, &blob, &acme, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"x"
    );
    f.kms
        .generate_data_key(&bob, &key, &acme, DataKeyLength::Aes128, &[])
        .await
        .unwrap();
    // Condition keys ignore case, the context key's too (as in AWS).
    f.kms
        .encrypt(&bob, &key, b"x", &ctx(&[("Tenant", "acme")]), &[])
        .await
        .expect("kms:EncryptionContext:tenant covers a context key Tenant");
    // A new ciphertext may not bind keys that differ only by case: a
    // condition could not tell them apart.
    check_err(
        f.kms
            .encrypt(
                &f.admin,
                &key,
                b"x",
                &ctx(&[("tenant", "acme"), ("Tenant", "evil")]),
                &[],
            )
            .await,
        "ValidationException",
        "differ only by case",
    );
    let evil = ctx(&[("tenant", "evil")]);
    let evil_blob = f.blob(&key, b"y", &evil).await;
    let refused = [
        (
            "Encrypt",
            f.kms.encrypt(&bob, &key, b"x", &evil, &[]).await.map(drop),
        ),
        (
            "Encrypt",
            f.kms
                .encrypt(&bob, &key, b"x", &EncryptionContext::new(), &[])
                .await
                .map(drop),
        ),
        (
            "Encrypt",
            f.kms
                .encrypt(&bob, &key, b"x", &ctx(&[("tenant", "ACME")]), &[])
                .await
                .map(drop),
        ),
        (
            "GenerateDataKey",
            f.kms
                .generate_data_key(&bob, &key, &evil, DataKeyLength::Aes128, &[])
                .await
                .map(drop),
        ),
        (
            "Decrypt",
            f.kms
                .decrypt(&bob, &evil_blob, &evil, "", &[])
                .await
                .map(drop),
        ),
    ];
    for (action, result) in refused {
        check_err(
            result,
            "AccessDeniedException",
            &format!(
                "User: user/bob is not authorized to perform: kms:{action} on resource: key/{key}"
            ),
        );
    }

    // kms:EncryptionContextKeys, from an identity policy: carol may use
    // only contexts whose keys are all among tenant and table.
    f.kms
        .create_user(&f.admin, "carol", Some(PrincipalKind::User))
        .await
        .unwrap();
    let keys_only = r#"{"Version":"2012-10-17","Statement":[{"Sid":"KnownKeys","Effect":"Allow","Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*",
       "Condition":{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["tenant","table"]}}}]}"#;
    f.kms
        .put_user_policy(&f.admin, "carol", "KnownKeys", keys_only)
        .await
        .unwrap();
    let carol = creds(
        &f.kms
            .create_access_token(&f.admin, "user/carol")
            .await
            .unwrap()
            .token,
    );
    for allowed in [
        ctx(&[("tenant", "acme")]),
        ctx(&[("table", "orders")]),
        ctx(&[("tenant", "evil"), ("table", "orders")]),
        // ForAllValues holds for an empty set, as in AWS.
        EncryptionContext::new(),
    ] {
        let blob = f
            .kms
            .encrypt(&carol, &key, b"z", &allowed, &[])
            .await
            .unwrap_or_else(|e| panic!("{allowed:?}: {e}"))
            .ciphertext_blob;
        f.kms
            .decrypt(&carol, &blob, &allowed, "", &[])
            .await
            .unwrap_or_else(|e| panic!("{allowed:?}: {e}"));
    }
    let stray = ctx(&[("tenant", "acme"), ("owner", "mallory")]);
    let stray_blob = f.blob(&key, b"w", &stray).await;
    for other in [stray.clone(), ctx(&[("Tenant", "acme")])] {
        check_err(
            f.kms.encrypt(&carol, &key, b"z", &other, &[]).await,
            "AccessDeniedException",
            &format!(
                "User: user/carol is not authorized to perform: kms:Encrypt on resource: key/{key} because no identity-based policy allows the kms:Encrypt action"
            ),
        );
    }
    check_err(
        f.kms.decrypt(&carol, &stray_blob, &stray, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
}

/// On CreateGrant, `kms:GranteePrincipal` is the grantee and
/// `kms:GrantOperations` the operations asked for (named without `kms:`):
/// a policy can let a principal give only some operations to only some
/// grantees.
#[tokio::test]
async fn grantee_and_grant_operations_conditions_decide_create_grant() {
    use GrantOperation::{Decrypt, Encrypt, RetireGrant};
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"BobGivesCarolDecrypt","Effect":"Allow","Principal":{"AWS":"user/bob"},"Action":"kms:CreateGrant","Resource":"*",
       "Condition":{"StringEquals":{"kms:GranteePrincipal":"user/carol"},
                    "ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","RetireGrant"]}}}]}"#;
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let carol = f.user("carol", PrincipalKind::User, &[]).await;
    let c = ctx(&[("t", "1")]);
    let blob = f.blob(&key, b"for carol", &c).await;
    let input = |grantee: &str, operations: Vec<GrantOperation>| CreateGrantInput {
        key_id: key.clone(),
        grantee: grantee.into(),
        retiring: None,
        operations,
        constraints: GrantConstraints::default(),
        name: String::new(),
        grant_tokens: vec![],
    };
    for (grantee, operations) in [
        ("user/dave", vec![Decrypt]),
        ("user/bob", vec![Decrypt]),
        ("service/carol", vec![Decrypt]),
        ("user/carol", vec![Decrypt, Encrypt]),
        ("user/carol", vec![Encrypt]),
    ] {
        check_err(
            f.kms.create_grant(&bob, input(grantee, operations)).await,
            "AccessDeniedException",
            &format!(
                "User: user/bob is not authorized to perform: kms:CreateGrant on resource: key/{key}"
            ),
        );
    }
    let listed = || async {
        f.kms
            .list_grants(&f.admin, &key, "", "", 0, "")
            .await
            .unwrap()
            .items
    };
    assert!(listed().await.is_empty(), "refused grants were not made");
    let decrypt_only = f
        .kms
        .create_grant(&bob, input("user/carol", vec![Decrypt]))
        .await
        .expect("the grantee and operations the policy allows");
    let with_retire = f
        .kms
        .create_grant(&bob, input("user/carol", vec![Decrypt, RetireGrant]))
        .await
        .expect("every operation among those allowed");
    assert_eq!(
        (decrypt_only.grantee.as_str(), decrypt_only.issuing.as_str()),
        ("user/carol", "user/bob")
    );
    let mut ids: Vec<String> = listed().await.into_iter().map(|g| g.grant_id).collect();
    ids.sort();
    let mut expected = vec![decrypt_only.grant_id.clone(), with_retire.grant_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    // The grant bob could make works for carol.
    assert_eq!(
        f.kms
            .decrypt(&carol, &blob, &c, "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"for carol"
    );
    let record = f.last_record(|r| r["event_name"] == "CreateGrant" && r["decision"] == "Allow");
    assert_eq!(
        record["matched_statements"],
        serde_json::json!(["key-policy:BobGivesCarolDecrypt"])
    );
}

/// Tag keys and values are limited in characters (as in AWS), not bytes.
#[tokio::test]
async fn tag_keys_and_values_are_limited_in_characters_not_bytes() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    // "é" is two bytes: 128 of them are 256 bytes and still a valid key.
    let (k128, v256) = ("é".repeat(128), "é".repeat(256));
    f.kms
        .tag_resource(&f.admin, &key, &[(k128.clone(), v256.clone())])
        .await
        .expect("128 characters of key, 256 of value");
    for (k, v, needle) in [
        (
            "é".repeat(129),
            "v".to_string(),
            "must have 1–128 characters",
        ),
        (String::new(), "v".to_string(), "must have 1–128 characters"),
        (
            "k".to_string(),
            "é".repeat(257),
            "must have at most 256 characters",
        ),
        ("aws:team".to_string(), "v".to_string(), "reserved prefix"),
        ("AWS:team".to_string(), "v".to_string(), "reserved prefix"),
    ] {
        check_err(
            f.kms.tag_resource(&f.admin, &key, &[(k, v)]).await,
            "TagException",
            needle,
        );
    }
    check_err(
        f.kms
            .untag_resource(&f.admin, &key, &["aws:team".to_string()])
            .await,
        "TagException",
        "reserved prefix",
    );
    // CreateKey with a reserved tag creates nothing.
    let before = f.kms.list_keys(&f.admin, 0, "").await.unwrap().items.len();
    check_err(
        f.kms
            .create_key(
                &f.admin,
                CreateKeyInput {
                    description: String::new(),
                    spec: KeySpec::SymmetricDefault,
                    usage: None,
                    policy: None,
                    tags: vec![("aws:cost-center".into(), "1".into())],
                },
            )
            .await,
        "TagException",
        "aws:cost-center",
    );
    assert_eq!(
        f.kms.list_keys(&f.admin, 0, "").await.unwrap().items.len(),
        before
    );
    let tags = f
        .kms
        .list_resource_tags(&f.admin, &key, 0, "")
        .await
        .unwrap();
    assert_eq!(
        tags.items,
        vec![(k128, v256)],
        "refused tags are not stored"
    );
}

/// A key holds at most MAX_TAGS tags: one more is refused, naming the
/// limit, and changes nothing; a tag that replaces one is not one more.
#[tokio::test]
async fn a_key_holds_at_most_max_tags() {
    use crate::keys::MAX_TAGS;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let tag = |i: usize| (format!("k{i:02}"), format!("v{i}"));
    let full: Vec<(String, String)> = (0..MAX_TAGS).map(tag).collect();
    f.kms.tag_resource(&f.admin, &key, &full).await.unwrap();
    let tags = || async {
        f.kms
            .list_resource_tags(&f.admin, &key, 0, "")
            .await
            .unwrap()
            .items
    };
    assert_eq!(tags().await, full);
    let limit = format!("a key may have at most {MAX_TAGS} tags");
    check_err(
        f.kms.tag_resource(&f.admin, &key, &[tag(MAX_TAGS)]).await,
        "LimitExceededException",
        &limit,
    );
    // A request that replaces one tag and adds another is refused whole.
    check_err(
        f.kms
            .tag_resource(
                &f.admin,
                &key,
                &[("k00".into(), "changed".into()), tag(MAX_TAGS)],
            )
            .await,
        "LimitExceededException",
        &limit,
    );
    assert_eq!(tags().await, full, "refused tagging changed nothing");
    f.kms
        .tag_resource(&f.admin, &key, &[("k00".into(), "changed".into())])
        .await
        .expect("replacing a tag at the limit");
    assert_eq!(tags().await[0], ("k00".to_string(), "changed".to_string()));
    f.kms
        .untag_resource(&f.admin, &key, &["k01".into()])
        .await
        .unwrap();
    f.kms
        .tag_resource(&f.admin, &key, &[tag(MAX_TAGS)])
        .await
        .expect("room after an untag");
    assert_eq!(tags().await.len(), MAX_TAGS);
    // CreateKey: the same limit, and no key is made.
    let keys_before = f.kms.list_keys(&f.admin, 0, "").await.unwrap().items;
    let too_many: Vec<(String, String)> = (0..=MAX_TAGS).map(tag).collect();
    check_err(
        f.kms
            .create_key(
                &f.admin,
                CreateKeyInput {
                    description: String::new(),
                    spec: KeySpec::SymmetricDefault,
                    usage: None,
                    policy: None,
                    tags: too_many,
                },
            )
            .await,
        "LimitExceededException",
        &limit,
    );
    assert_eq!(
        f.kms.list_keys(&f.admin, 0, "").await.unwrap().items,
        keys_before
    );
    let with_full = f
        .kms
        .create_key(
            &f.admin,
            CreateKeyInput {
                description: String::new(),
                spec: KeySpec::SymmetricDefault,
                usage: None,
                policy: None,
                tags: full.clone(),
            },
        )
        .await
        .expect("exactly the limit");
    assert_eq!(with_full.tags.len(), MAX_TAGS);
}

/// A request may carry at most MAX_GRANT_TOKENS grant tokens, whichever
/// operation it is: one more is refused before anything is decided.
#[tokio::test]
async fn a_request_carries_at_most_max_grant_tokens() {
    use crate::grants::MAX_GRANT_TOKENS;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let c = ctx(&[("t", "1")]);
    let blob = f.blob(&key, b"x", &c).await;
    let mut tokens = Vec::new();
    for _ in 0..=MAX_GRANT_TOKENS {
        let grant = f
            .kms
            .create_grant(
                &f.admin,
                CreateGrantInput {
                    key_id: key.clone(),
                    grantee: "user/bob".into(),
                    retiring: None,
                    operations: vec![
                        GrantOperation::Decrypt,
                        GrantOperation::Encrypt,
                        GrantOperation::DescribeKey,
                        GrantOperation::GenerateDataKey,
                        GrantOperation::CreateGrant,
                    ],
                    constraints: GrantConstraints::default(),
                    name: String::new(),
                    grant_tokens: vec![],
                },
            )
            .await
            .unwrap();
        tokens.push(grant.token());
    }
    let (at_limit, over) = (&tokens[..MAX_GRANT_TOKENS], &tokens[..]);
    assert_eq!(over.len(), MAX_GRANT_TOKENS + 1);
    let limit = format!("at most {MAX_GRANT_TOKENS} grant tokens may be sent");
    assert_eq!(
        f.kms
            .decrypt(&bob, &blob, &c, "", at_limit)
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"x"
    );
    f.kms.encrypt(&bob, &key, b"x", &c, at_limit).await.unwrap();
    f.kms.describe_key(&bob, &key, at_limit).await.unwrap();
    let refused: Vec<(&str, Result<(), KmsError>)> = vec![
        (
            "Decrypt",
            f.kms.decrypt(&bob, &blob, &c, "", over).await.map(drop),
        ),
        (
            "Encrypt",
            f.kms.encrypt(&bob, &key, b"x", &c, over).await.map(drop),
        ),
        (
            "GenerateDataKey",
            f.kms
                .generate_data_key(&bob, &key, &c, DataKeyLength::Aes256, over)
                .await
                .map(drop),
        ),
        (
            "DescribeKey",
            f.kms.describe_key(&bob, &key, over).await.map(drop),
        ),
        (
            "CreateGrant",
            f.kms
                .create_grant(
                    &bob,
                    CreateGrantInput {
                        key_id: key.clone(),
                        grantee: "user/bob".into(),
                        retiring: None,
                        operations: vec![GrantOperation::Decrypt],
                        constraints: GrantConstraints::default(),
                        name: String::new(),
                        grant_tokens: over.to_vec(),
                    },
                )
                .await
                .map(drop),
        ),
    ];
    for (operation, result) in refused {
        let e = result.expect_err(operation);
        assert_eq!(e.reason(), "ValidationException", "{operation}: {e}");
        assert!(e.to_string().contains(&limit), "{operation}: {e}");
    }
    assert_eq!(
        f.kms
            .list_grants(&f.admin, &key, "", "", 0, "")
            .await
            .unwrap()
            .items
            .len(),
        MAX_GRANT_TOKENS + 1,
        "the refused CreateGrant made no grant"
    );
}

/// A principal holds at most MAX_INLINE_POLICIES inline policies (one more
/// is refused, naming the limit, and changes nothing; replacing one is not
/// one more) and MAX_TOKENS_PER_PRINCIPAL active access tokens.
#[tokio::test]
async fn a_principal_holds_at_most_max_inline_policies_and_tokens() {
    use iam_ops::{MAX_INLINE_POLICIES, MAX_TOKENS_PER_PRINCIPAL};
    let f = fixture().await;
    f.kms
        .create_user(&f.admin, "dev", Some(PrincipalKind::User))
        .await
        .unwrap();
    let doc = |action: &str| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        )
    };
    let names: Vec<String> = (0..MAX_INLINE_POLICIES)
        .map(|i| format!("P{i:02}"))
        .collect();
    for name in &names {
        f.kms
            .put_user_policy(&f.admin, "dev", name, &doc("table:GetItem"))
            .await
            .unwrap();
    }
    let listed = || async { f.kms.list_user_policies(&f.admin, "dev").await.unwrap() };
    assert_eq!(inline_names(&listed().await), names);
    check_err(
        f.kms
            .put_user_policy(&f.admin, "dev", "OneMore", &doc("kms:*"))
            .await,
        "LimitExceededException",
        &format!("user/dev already has {MAX_INLINE_POLICIES} inline policies"),
    );
    let after = listed().await;
    assert_eq!(
        inline_names(&after),
        names,
        "the refused policy was not added"
    );
    // Nor does it apply: dev still may not create keys.
    let token = f.kms.create_access_token(&f.admin, "dev").await.unwrap();
    let dev = creds(&token.token);
    check_err(
        f.kms
            .create_key(
                &dev,
                CreateKeyInput {
                    description: String::new(),
                    spec: KeySpec::SymmetricDefault,
                    usage: None,
                    policy: None,
                    tags: vec![],
                },
            )
            .await,
        "AccessDeniedException",
        "kms:CreateKey",
    );
    // Replacing a policy at the limit is allowed.
    f.kms
        .put_user_policy(&f.admin, "dev", "P00", &doc("kms:CreateKey"))
        .await
        .expect("replacing one at the limit");
    assert_eq!(listed().await.inline["P00"], doc("kms:CreateKey"));
    f.kms
        .delete_user_policy(&f.admin, "dev", "P01")
        .await
        .unwrap();
    f.kms
        .put_user_policy(&f.admin, "dev", "OneMore", &doc("kms:ListKeys"))
        .await
        .expect("room after a delete");
    assert_eq!(listed().await.inline.len(), MAX_INLINE_POLICIES);

    // Access tokens: dev has one; fill up to the limit, then one more is refused.
    for _ in 1..MAX_TOKENS_PER_PRINCIPAL {
        f.kms.create_access_token(&f.admin, "dev").await.unwrap();
    }
    check_err(
        f.kms.create_access_token(&f.admin, "dev").await,
        "LimitExceededException",
        &format!("user/dev already has {MAX_TOKENS_PER_PRINCIPAL} active tokens"),
    );
    let tokens = f.kms.list_access_tokens(&f.admin, "dev").await.unwrap();
    assert_eq!(tokens.len(), MAX_TOKENS_PER_PRINCIPAL);
    // Revoke one of the others (the list is not in creation order).
    let other = tokens
        .iter()
        .find(|t| t.token_id != token.token_id)
        .expect("another token");
    f.kms
        .delete_access_token(&f.admin, "dev", &other.token_id)
        .await
        .unwrap();
    f.kms
        .create_access_token(&f.admin, "dev")
        .await
        .expect("room after a revocation");
    // The first token still works.
    assert_eq!(
        f.kms.get_caller_identity(&dev).await.unwrap().principal,
        "user/dev"
    );
}

/// Key policies name principals by name: a principal of a deleted one's
/// name is refused while a key policy still names it, so it cannot inherit
/// the old one's keys (a creator has full control of its keys by default).
#[tokio::test]
async fn a_deleted_principals_name_is_not_reused_while_a_key_policy_names_it() {
    let f = fixture().await;
    let bob = f
        .user("bob", PrincipalKind::User, &["AdministratorAccess"])
        .await;
    let bobs_key = f
        .kms
        .create_key(
            &bob,
            CreateKeyInput {
                description: "bob's".into(),
                spec: KeySpec::SymmetricDefault,
                usage: None,
                policy: None,
                tags: vec![],
            },
        )
        .await
        .unwrap()
        .key_id;
    let c = ctx(&[("t", "1")]);
    let blob = f
        .kms
        .encrypt(&bob, &bobs_key, b"bob's secret", &c, &[])
        .await
        .unwrap()
        .ciphertext_blob;
    f.kms.delete_user(&f.admin, "bob").await.unwrap();
    check_err(
        f.kms
            .create_user(&f.admin, "bob", Some(PrincipalKind::User))
            .await,
        "AlreadyExistsException",
        &format!("a deleted user/bob is still named in the key policy of 1 key(s) ({bobs_key})"),
    );
    assert!(
        f.kms
            .list_users(&f.admin, 0, "")
            .await
            .unwrap()
            .items
            .iter()
            .all(|u| u.principal != "user/bob"),
        "the refused user was not created"
    );
    // A name never used before may be named ahead of its creation.
    let daves = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"Dave","Effect":"Allow","Principal":{"AWS":"user/dave"},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    let daves_key = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .put_key_policy(&f.admin, &daves_key, "default", daves)
        .await
        .unwrap();
    f.user("dave", PrincipalKind::User, &[]).await;
    // Once no policy names the old bob, the name is free, and the new bob
    // has nothing of the old one's.
    let admin_only = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"}]}"#;
    f.kms
        .put_key_policy(&f.admin, &bobs_key, "default", admin_only)
        .await
        .unwrap();
    let new_bob = f.user("bob", PrincipalKind::User, &[]).await;
    check_err(
        f.kms.decrypt(&new_bob, &blob, &c, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
}

fn grant_input(key: &str, grantee: &str, operations: &[GrantOperation]) -> CreateGrantInput {
    CreateGrantInput {
        key_id: key.to_string(),
        grantee: grantee.to_string(),
        retiring: None,
        operations: operations.to_vec(),
        constraints: GrantConstraints::default(),
        name: String::new(),
        grant_tokens: vec![],
    }
}

/// A grant's RetireGrant lets its grantee retire that grant, never another
/// principal's grant on the same key.
#[tokio::test]
async fn a_grants_retire_grant_covers_only_that_grant() {
    use GrantOperation::{Decrypt, RetireGrant};
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let alice = f.user("alice", PrincipalKind::User, &[]).await;
    let bobs = f
        .kms
        .create_grant(
            &f.admin,
            grant_input(&key, "user/bob", &[Decrypt, RetireGrant]),
        )
        .await
        .unwrap();
    let alices = f
        .kms
        .create_grant(&f.admin, grant_input(&key, "user/alice", &[Decrypt]))
        .await
        .unwrap();
    check_err(
        f.kms.retire_grant(&bob, "", &key, &alices.grant_id).await,
        "AccessDeniedException",
        "kms:RetireGrant",
    );
    check_err(
        f.kms.retire_grant(&bob, &alices.token(), "", "").await,
        "AccessDeniedException",
        "kms:RetireGrant",
    );
    let blob = f.blob(&key, b"still hers", &ctx(&[])).await;
    assert_eq!(
        &f.kms
            .decrypt(&alice, &blob, &ctx(&[]), "", &[])
            .await
            .expect("alice's grant is still there")
            .plaintext[..],
        b"still hers"
    );
    f.kms
        .retire_grant(&bob, "", &key, &bobs.grant_id)
        .await
        .expect("bob retires his own grant");
    let left = f
        .kms
        .list_grants(&f.admin, &key, "", "", 0, "")
        .await
        .unwrap();
    assert_eq!(
        left.items.iter().map(|g| &g.grant_id).collect::<Vec<_>>(),
        vec![&alices.grant_id]
    );
}

/// Encryption-context constraints bound the operations that take a
/// context; DescribeKey may be granted beside them and is not bound. A
/// grant for operations the key cannot perform is refused.
#[tokio::test]
async fn constrained_grants_may_include_describe_key_and_must_fit_the_key() {
    use GrantOperation::{Decrypt, DescribeKey, Encrypt, GenerateMac};
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let hmac = f.key(KeySpec::Hmac256).await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let acme = ctx(&[("tenant", "acme")]);
    let mut input = grant_input(&key, "user/bob", &[Decrypt, DescribeKey]);
    input.constraints = GrantConstraints {
        equals: None,
        subset: Some(acme.clone()),
    };
    f.kms
        .create_grant(&f.admin, input)
        .await
        .expect("a constrained grant may list DescribeKey");
    let described = f
        .kms
        .describe_key(&bob, &key, &[])
        .await
        .expect("DescribeKey is not bound by the constraint");
    assert_eq!(described.key_id, key);
    let blob = f.blob(&key, b"x", &acme).await;
    f.kms
        .decrypt(&bob, &blob, &acme, "", &[])
        .await
        .expect("Decrypt within the constraint");
    let other = ctx(&[("tenant", "other")]);
    let blob = f.blob(&key, b"x", &other).await;
    check_err(
        f.kms.decrypt(&bob, &blob, &other, "", &[]).await,
        "AccessDeniedException",
        "kms:Decrypt",
    );
    // Operations the key cannot perform.
    for (key_id, op, usage) in [
        (&key, GenerateMac, "ENCRYPT_DECRYPT"),
        (&hmac, Encrypt, "GENERATE_VERIFY_MAC"),
        (&hmac, Decrypt, "GENERATE_VERIFY_MAC"),
    ] {
        check_err(
            f.kms
                .create_grant(&f.admin, grant_input(key_id, "user/bob", &[op]))
                .await,
            "ValidationException",
            &format!("whose usage is {usage}"),
        );
    }
    f.kms
        .create_grant(
            &f.admin,
            grant_input(&hmac, "user/bob", &[GenerateMac, DescribeKey]),
        )
        .await
        .expect("MAC operations on an HMAC key");
}

async fn grant_count(f: &Fixture, key: &str) -> usize {
    f.kms
        .list_grants(&f.admin, key, "", "", 0, "")
        .await
        .unwrap()
        .items
        .len()
}

/// A retried CreateGrant with the same name and parameters answers with
/// the grant it made; any difference makes a new grant.
#[tokio::test]
async fn a_named_create_grant_is_idempotent() {
    use GrantOperation::{Decrypt, Encrypt};
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let mut input = grant_input(&key, "user/bob", &[Decrypt]);
    input.name = "nightly-job".into();
    let first = f.kms.create_grant(&f.admin, input.clone()).await.unwrap();
    let again = f.kms.create_grant(&f.admin, input.clone()).await.unwrap();
    assert_eq!(again.grant_id, first.grant_id);
    assert_eq!(grant_count(&f, &key).await, 1);
    let mut wider = input.clone();
    wider.operations = vec![Decrypt, Encrypt];
    let other = f.kms.create_grant(&f.admin, wider).await.unwrap();
    assert_ne!(other.grant_id, first.grant_id);
    let mut unnamed = input;
    unnamed.name = String::new();
    let a = f.kms.create_grant(&f.admin, unnamed.clone()).await.unwrap();
    let b = f.kms.create_grant(&f.admin, unnamed).await.unwrap();
    assert_ne!(a.grant_id, b.grant_id, "unnamed grants are never merged");
    assert_eq!(grant_count(&f, &key).await, 4);
}

/// An alias moves only between keys of one usage; the refused move leaves
/// it where it was.
#[tokio::test]
async fn update_alias_keeps_the_key_usage() {
    let f = fixture().await;
    let a = f.key(KeySpec::SymmetricDefault).await;
    let b = f.key(KeySpec::SymmetricDefault).await;
    let mac = f.key(KeySpec::Hmac256).await;
    let mac512 = f.key(KeySpec::Hmac512).await;
    f.kms
        .create_alias(&f.admin, "alias/orders", &a)
        .await
        .unwrap();
    check_err(
        f.kms.update_alias(&f.admin, "alias/orders", &mac).await,
        "ValidationException",
        "same usage",
    );
    assert_eq!(
        f.kms
            .describe_key(&f.admin, "alias/orders", &[])
            .await
            .unwrap()
            .key_id,
        a
    );
    f.kms
        .update_alias(&f.admin, "alias/orders", &b)
        .await
        .unwrap();
    assert_eq!(
        f.kms
            .describe_key(&f.admin, "alias/orders", &[])
            .await
            .unwrap()
            .key_id,
        b
    );
    // Between HMAC keys of different lengths: the same usage.
    f.kms
        .create_alias(&f.admin, "alias/signing", &mac)
        .await
        .unwrap();
    f.kms
        .update_alias(&f.admin, "alias/signing", &mac512)
        .await
        .unwrap();
}

/// A key pending deletion keeps its description.
#[tokio::test]
async fn update_key_description_is_refused_while_pending_deletion() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .schedule_key_deletion(&f.admin, &key, Some(7))
        .await
        .unwrap();
    check_err(
        f.kms
            .update_key_description(&f.admin, &key, "changed")
            .await,
        "KMSInvalidStateException",
        "change its description",
    );
    assert_eq!(
        f.kms
            .describe_key(&f.admin, &key, &[])
            .await
            .unwrap()
            .description,
        "test"
    );
}

/// On-demand rotation is limited per key; the refused rotation changes
/// nothing. Rotation history is for symmetric keys only.
#[tokio::test]
async fn on_demand_rotations_are_limited_and_hmac_keys_have_no_history() {
    use crate::keys::MAX_ON_DEMAND_ROTATIONS;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    for n in 0..MAX_ON_DEMAND_ROTATIONS {
        let (_, version) = f.kms.rotate_key_on_demand(&f.admin, &key).await.unwrap();
        assert_eq!(version as usize, n + 2);
    }
    check_err(
        f.kms.rotate_key_on_demand(&f.admin, &key).await,
        "LimitExceededException",
        &format!("rotated on demand {MAX_ON_DEMAND_ROTATIONS} times"),
    );
    let described = f.kms.describe_key(&f.admin, &key, &[]).await.unwrap();
    assert_eq!(
        described.current_version as usize,
        MAX_ON_DEMAND_ROTATIONS + 1
    );
    let hmac = f.key(KeySpec::Hmac256).await;
    check_err(
        f.kms.list_key_rotations(&f.admin, &hmac, 0, "").await,
        "UnsupportedOperationException",
        "HMAC_256",
    );
}

/// Enabling rotation again keeps the schedule: with the same period
/// nothing moves; with another one the next rotation is counted from the
/// same start.
#[tokio::test]
async fn enabling_rotation_again_keeps_its_schedule() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(365))
        .await
        .unwrap();
    f.clock.advance(100 * DAY);
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(365))
        .await
        .unwrap();
    let status = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(status.next_rotation, Some(T0 + 365 * DAY));
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(180))
        .await
        .unwrap();
    let status = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(
        (status.period_days, status.next_rotation),
        (180, Some(T0 + 180 * DAY))
    );
    // A period already over from the start: due now.
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(90))
        .await
        .unwrap();
    let status = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(status.next_rotation, Some(T0 + 100 * DAY));
    // Turned off and on again: counted from now.
    f.kms.disable_key_rotation(&f.admin, &key).await.unwrap();
    f.kms
        .enable_key_rotation(&f.admin, &key, Some(90))
        .await
        .unwrap();
    let status = f.kms.get_key_rotation_status(&f.admin, &key).await.unwrap();
    assert_eq!(status.next_rotation, Some(T0 + 190 * DAY));
}

/// CreateGrant and RetireGrant are decided with the grant's constraint
/// pairs as the encryption context (as in AWS), so a Deny on a context
/// value stops a grant for it.
#[tokio::test]
async fn create_and_retire_grant_see_the_constraint_pairs_as_context() {
    use GrantOperation::Decrypt;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let policy = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"NoRestrictedGrants","Effect":"Deny","Principal":{"AWS":"*"},
       "Action":["kms:CreateGrant","kms:RetireGrant"],"Resource":"*",
       "Condition":{"StringEquals":{"kms:EncryptionContext:Stage":"Restricted"}}}]}"#;
    let constrained = |stage: &str, subset: bool| {
        let mut input = grant_input(&key, "user/bob", &[Decrypt]);
        let pairs = Some(ctx(&[("stage", stage)]));
        input.constraints = if subset {
            GrantConstraints {
                equals: None,
                subset: pairs,
            }
        } else {
            GrantConstraints {
                equals: pairs,
                subset: None,
            }
        };
        input
    };
    // Made before the Deny is in place.
    let restricted = f
        .kms
        .create_grant(&f.admin, constrained("Restricted", false))
        .await
        .unwrap();
    f.kms
        .put_key_policy(&f.admin, &key, "default", policy)
        .await
        .unwrap();
    for subset in [false, true] {
        check_err(
            f.kms
                .create_grant(&f.admin, constrained("Restricted", subset))
                .await,
            "AccessDeniedException",
            "kms:CreateGrant",
        );
    }
    check_err(
        f.kms
            .retire_grant(&f.admin, "", &key, &restricted.grant_id)
            .await,
        "AccessDeniedException",
        "kms:RetireGrant",
    );
    // Constraint keys that differ only by case are refused, as in a new
    // ciphertext's context.
    let mut twins = grant_input(&key, "user/bob", &[Decrypt]);
    twins.constraints = GrantConstraints {
        equals: Some(ctx(&[("stage", "Test"), ("Stage", "Restricted")])),
        subset: None,
    };
    check_err(
        f.kms.create_grant(&f.admin, twins).await,
        "ValidationException",
        "differ only by case",
    );
    let grant = f
        .kms
        .create_grant(&f.admin, constrained("Test", true))
        .await
        .expect("a grant for another stage");
    let record = f.last_record(|r| r["event_name"] == "CreateGrant");
    assert_eq!(record["decision"], "Allow");
    f.kms
        .retire_grant(&f.admin, "", &key, &grant.grant_id)
        .await
        .expect("retire a grant for another stage");
}

/// A list call's marker must be one such a call returns: a mistyped one is
/// InvalidMarkerException, not a silently empty page; a real one (even of
/// an item deleted since) pages on.
#[tokio::test]
async fn list_markers_must_be_ones_the_call_returns() {
    use GrantOperation::Decrypt;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.key(KeySpec::SymmetricDefault).await;
    f.kms.create_alias(&f.admin, "alias/a", &key).await.unwrap();
    f.kms
        .tag_resource(&f.admin, &key, &[("k".into(), "v".into())])
        .await
        .unwrap();
    let grant = f
        .kms
        .create_grant(&f.admin, grant_input(&key, "user/bob", &[Decrypt]))
        .await
        .unwrap();
    let bad = "zzz";
    check_err(
        f.kms.list_keys(&f.admin, 0, bad).await,
        "InvalidMarkerException",
        "it returns key ids",
    );
    check_err(
        f.kms.list_aliases(&f.admin, "", 0, bad).await,
        "InvalidMarkerException",
        "it returns alias names",
    );
    check_err(
        f.kms.list_grants(&f.admin, &key, "", "", 0, bad).await,
        "InvalidMarkerException",
        "it returns grant ids",
    );
    check_err(
        f.kms.list_users(&f.admin, 0, bad).await,
        "InvalidMarkerException",
        "it returns principal names",
    );
    check_err(
        f.kms.list_key_rotations(&f.admin, &key, 0, bad).await,
        "InvalidMarkerException",
        "it returns version numbers",
    );
    check_err(
        f.kms
            .list_resource_tags(&f.admin, &key, 0, &"x".repeat(129))
            .await,
        "InvalidMarkerException",
        "it returns tag keys",
    );
    // Well-formed markers page on, whether or not they name something
    // that still exists.
    let first = f.kms.list_keys(&f.admin, 1, "").await.unwrap();
    let after = first.items[0].clone();
    let rest = f.kms.list_keys(&f.admin, 0, &after).await.unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(f.kms.list_aliases(&f.admin, "", 0, "alias/0").await.is_ok());
    assert!(
        f.kms
            .list_grants(&f.admin, &key, "", "", 0, &grant.grant_id)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(f.kms.list_users(&f.admin, 0, "user/a").await.is_ok());
    assert!(
        f.kms
            .list_resource_tags(&f.admin, &key, 0, "a")
            .await
            .is_ok()
    );
}

/// Tokens made and deleted again and again do not pile up: a principal
/// keeps its most recently revoked ten (a use of one says "revoked"), and
/// an older one is forgotten (its use is refused as unknown), in memory and
/// in the store.
#[tokio::test]
async fn only_the_latest_revoked_tokens_are_kept() {
    use iam_ops::MAX_REVOKED_TOKENS_KEPT;
    let f = fixture().await;
    let bob = f
        .kms
        .create_user(&f.admin, "bob", Some(PrincipalKind::User))
        .await
        .unwrap();
    let mut secrets = Vec::new();
    for _ in 0..25 {
        let t = f
            .kms
            .create_access_token(&f.admin, &bob.principal)
            .await
            .unwrap();
        f.kms
            .delete_access_token(&f.admin, "bob", &t.token_id)
            .await
            .unwrap();
        secrets.push((t.token_id.clone(), t.token.to_string()));
        f.clock.advance(1);
    }
    let active = f
        .kms
        .create_access_token(&f.admin, &bob.principal)
        .await
        .unwrap();
    let listed = f.kms.list_access_tokens(&f.admin, "bob").await.unwrap();
    let revoked: Vec<&str> = listed
        .iter()
        .filter(|t| t.revoked.is_some())
        .map(|t| t.token_id.as_str())
        .collect();
    let latest: Vec<&str> = secrets[15..].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(revoked.len(), MAX_REVOKED_TOKENS_KEPT);
    for id in &latest {
        assert!(revoked.contains(id), "{id} was revoked last but is gone");
    }
    assert_eq!(listed.len(), MAX_REVOKED_TOKENS_KEPT + 1);
    assert!(listed.iter().any(|t| t.token_id == active.token_id));
    check_err(
        f.kms.get_caller_identity(&creds(&secrets[24].1)).await,
        "UnrecognizedClientException",
        "revoked",
    );
    check_err(
        f.kms.get_caller_identity(&creds(&secrets[0].1)).await,
        "UnrecognizedClientException",
        "not a valid access token",
    );
    f.kms
        .get_caller_identity(&creds(&active.token))
        .await
        .unwrap();

    // The store forgot them too.
    let db = rusqlite::Connection::open(f.dir.path().join("kms.db")).unwrap();
    let stored: usize = db
        .query_row(
            "SELECT count(*) FROM tokens WHERE principal = ?1",
            [&bob.principal],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(stored, MAX_REVOKED_TOKENS_KEPT + 1);
}

/// A key has at most 50 aliases (as in AWS), whether the next one is
/// created for it or moved to it; one deleted makes room.
#[tokio::test]
async fn a_key_has_at_most_fifty_aliases() {
    use key_ops::MAX_ALIASES_PER_KEY;
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let other = f.key(KeySpec::SymmetricDefault).await;
    for i in 0..MAX_ALIASES_PER_KEY {
        f.kms
            .create_alias(&f.admin, &format!("alias/k-{i}"), &key)
            .await
            .unwrap();
    }
    check_err(
        f.kms.create_alias(&f.admin, "alias/one-more", &key).await,
        "LimitExceededException",
        &format!("key {key} already has 50 aliases"),
    );
    f.kms
        .create_alias(&f.admin, "alias/elsewhere", &other)
        .await
        .unwrap();
    check_err(
        f.kms.update_alias(&f.admin, "alias/elsewhere", &key).await,
        "LimitExceededException",
        "DeleteAlias",
    );
    // A move that could not be made anyway says why, not that the key is
    // full.
    let mac = f.key(KeySpec::Hmac256).await;
    f.kms
        .create_alias(&f.admin, "alias/mac", &mac)
        .await
        .unwrap();
    check_err(
        f.kms.update_alias(&f.admin, "alias/mac", &key).await,
        "ValidationException",
        "same usage",
    );
    // Pointing one of the key's own aliases at it again is no new alias.
    f.kms
        .update_alias(&f.admin, "alias/k-0", &key)
        .await
        .unwrap();
    f.kms.delete_alias(&f.admin, "alias/k-0").await.unwrap();
    f.kms
        .update_alias(&f.admin, "alias/elsewhere", &key)
        .await
        .unwrap();
    let listed = f.kms.list_aliases(&f.admin, &key, 100, "").await.unwrap();
    assert_eq!(listed.items.len(), MAX_ALIASES_PER_KEY);
}

/// A description may hold 8192 characters, however many bytes they take
/// (as AWS counts); one more is refused, on CreateKey and on
/// UpdateKeyDescription, and changes nothing.
#[tokio::test]
async fn descriptions_are_limited_in_characters() {
    let f = fixture().await;
    let input = |description: String| CreateKeyInput {
        description,
        spec: KeySpec::SymmetricDefault,
        usage: None,
        policy: None,
        tags: vec![],
    };
    let longest = "é".repeat(crate::keys::MAX_DESCRIPTION_LEN);
    assert_eq!(longest.len(), 2 * crate::keys::MAX_DESCRIPTION_LEN);
    let key = f
        .kms
        .create_key(&f.admin, input(longest.clone()))
        .await
        .expect("8192 two-byte characters are allowed")
        .key_id;
    let too_long = format!("{longest}x");
    check_err(
        f.kms.create_key(&f.admin, input(too_long.clone())).await,
        "ValidationException",
        "description is 8193 characters; at most 8192",
    );
    check_err(
        f.kms
            .update_key_description(&f.admin, &key, &too_long)
            .await,
        "ValidationException",
        "8193 characters",
    );
    let described = f.kms.describe_key(&f.admin, &key, &[]).await.unwrap();
    assert_eq!(described.description, longest);
}

/// `--max-keys` and `--max-principals`: past them CreateKey and CreateUser
/// fail with LimitExceededException naming the setting, and change
/// nothing; a key counts until it is destroyed, a principal until deleted;
/// a caller who may not create them is refused for that, not told the
/// count.
#[tokio::test]
async fn keys_and_principals_are_limited_by_the_quotas() {
    let Fixture {
        kms,
        admin,
        clock,
        dir,
    } = fixture().await;
    let f = Fixture {
        kms: kms.with_quotas(super::Quotas {
            keys: 3,
            principals: 3,
        }),
        admin,
        clock,
        dir,
    };
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(f.key(KeySpec::SymmetricDefault).await);
    }
    let input = CreateKeyInput {
        description: "one too many".into(),
        spec: KeySpec::SymmetricDefault,
        usage: None,
        policy: None,
        tags: vec![],
    };
    check_err(
        f.kms.create_key(&f.admin, input.clone()).await,
        "LimitExceededException",
        "already holds 3 keys, the most it allows (--max-keys 3)",
    );
    let listed = f.kms.list_keys(&f.admin, 100, "").await.unwrap();
    assert_eq!(listed.items.len(), 3, "nothing was created");
    // Pending deletion still counts; destroyed does not.
    f.kms
        .schedule_key_deletion(&f.admin, &keys[0], Some(7))
        .await
        .unwrap();
    check_err(
        f.kms.create_key(&f.admin, input.clone()).await,
        "LimitExceededException",
        "ScheduleKeyDeletion",
    );
    f.clock.advance(7 * DAY + 1);
    f.kms.run_maintenance().await.unwrap();
    f.kms
        .create_key(&f.admin, input.clone())
        .await
        .expect("a destroyed key makes room");

    // The administrator is one principal.
    let reader = f.user("reader", PrincipalKind::User, &[]).await;
    f.kms
        .create_user(&f.admin, "second", Some(PrincipalKind::User))
        .await
        .unwrap();
    check_err(
        f.kms
            .create_user(&f.admin, "third", Some(PrincipalKind::User))
            .await,
        "LimitExceededException",
        "already has 3 principals, the most it allows (--max-principals 3)",
    );
    // Refused for what it is not allowed, whatever the count.
    check_err(
        f.kms
            .create_user(&reader, "fourth", Some(PrincipalKind::User))
            .await,
        "AccessDeniedException",
        "iam:CreateUser",
    );
    check_err(
        f.kms.create_key(&reader, input.clone()).await,
        "AccessDeniedException",
        "kms:CreateKey",
    );
    f.kms.delete_user(&f.admin, "user/second").await.unwrap();
    f.kms
        .create_user(&f.admin, "third", Some(PrincipalKind::User))
        .await
        .expect("a deleted principal makes room");
}

/// A software root key that records what it is told to forget.
struct Forgetful {
    inner: SoftwareRootKey,
    forgotten: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Every material it was given to wrap (backing keys).
    wrapped: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Wraps fail as unavailable while set (a token that cannot be used).
    cannot_wrap: std::sync::atomic::AtomicBool,
}

impl Forgetful {
    fn new() -> Forgetful {
        Forgetful {
            inner: SoftwareRootKey::generate(),
            forgotten: std::sync::Mutex::new(Vec::new()),
            wrapped: std::sync::Mutex::new(Vec::new()),
            cannot_wrap: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl RootKey for Forgetful {
    fn wrap(
        &self,
        label: &[u8],
        material: &[u8],
    ) -> Result<Vec<u8>, crate::crypto::root_key::RootKeyUnavailable> {
        if self.cannot_wrap.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::crypto::root_key::RootKeyUnavailable(
                "the token is unavailable".into(),
            ));
        }
        self.wrapped.lock().unwrap().push(material.to_vec());
        self.inner.wrap(label, material)
    }

    fn unwrap(
        &self,
        label: &[u8],
        wrapped: &[u8],
    ) -> Result<crate::crypto::SecretBytes, UnwrapError> {
        self.inner.unwrap(label, wrapped)
    }

    fn derive(
        &self,
        purpose: &[u8],
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, crate::crypto::root_key::RootKeyUnavailable> {
        self.inner.derive(purpose)
    }

    fn forget(&self, label: &[u8]) {
        self.forgotten.lock().unwrap().push(label.to_vec());
    }
}

/// A fixture over a [`Forgetful`] root key.
async fn forgetful_fixture() -> (Fixture, Arc<Forgetful>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let root = Arc::new(Forgetful::new());
    let store = SqliteStore::open(&dir.path().join("kms.db")).unwrap();
    let audit = audit_for(dir.path(), root.as_ref());
    let kms = Kms::open(Arc::new(store), root.clone(), audit, clock.clone()).unwrap();
    let admin = bootstrap_admin(&kms).await;
    (
        Fixture {
            kms,
            admin,
            clock,
            dir,
        },
        root,
    )
}

/// While the root key cannot wrap (its token is unavailable), maintenance
/// rotates nothing but still destroys what is due, whatever order the keys
/// come in; once it can, the rotation that was due happens.
#[tokio::test]
async fn a_root_key_that_cannot_wrap_holds_back_rotations_not_destructions() {
    let (f, root) = forgetful_fixture().await;
    let mut keys = [
        f.key(KeySpec::SymmetricDefault).await,
        f.key(KeySpec::SymmetricDefault).await,
    ];
    // The rotating key comes first in the pass (key id order).
    keys.sort();
    let [rotating, deleting] = keys;
    f.kms
        .enable_key_rotation(&f.admin, &rotating, Some(90))
        .await
        .unwrap();
    f.kms
        .schedule_key_deletion(&f.admin, &deleting, Some(7))
        .await
        .unwrap();
    f.clock.advance(90 * DAY);
    root.cannot_wrap
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let report = f.kms.run_maintenance().await.unwrap();
    assert_eq!(report.destroyed, vec![deleting.clone()]);
    assert!(report.rotated.is_empty(), "{report:?}");
    assert!(
        root.forgotten
            .lock()
            .unwrap()
            .contains(&crate::keys::wrap_label(&deleting, 1))
    );
    root.cannot_wrap
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let report = f.kms.run_maintenance().await.unwrap();
    assert_eq!(report.rotated, vec![rotating]);
}

/// A root key that keeps unwrapped backing keys (the PKCS#11 one) is told
/// to drop every version's when the key is destroyed, and not before.
#[tokio::test]
async fn a_destroyed_keys_backing_keys_are_forgotten_by_the_root_key() {
    let (f, root) = forgetful_fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let other = f.key(KeySpec::SymmetricDefault).await;
    f.kms.rotate_key_on_demand(&f.admin, &key).await.unwrap();
    f.kms
        .schedule_key_deletion(&f.admin, &key, Some(7))
        .await
        .unwrap();
    f.clock.advance(7 * DAY - 1);
    f.kms.run_maintenance().await.unwrap();
    assert!(root.forgotten.lock().unwrap().is_empty());
    f.clock.advance(1);
    f.kms.run_maintenance().await.unwrap();
    assert_eq!(
        *root.forgotten.lock().unwrap(),
        vec![
            crate::keys::wrap_label(&key, 1),
            crate::keys::wrap_label(&key, 2)
        ]
    );
    assert!(
        !root
            .forgotten
            .lock()
            .unwrap()
            .contains(&crate::keys::wrap_label(&other, 1))
    );
}

/// Failed authentications past the per-address rate are answered as
/// before but only counted; one record per address then gives the count.
/// Other addresses, and calls that authenticate, are not held back.
#[tokio::test]
async fn failed_authentications_past_the_rate_are_counted_and_recorded_together() {
    // 10 a minute: bursts of 1, then one per 6 s (longer than the test).
    let f = fixture().await;
    let f = Fixture {
        kms: f.kms.with_auth_failure_limit(10),
        ..f
    };
    let key = f.key(KeySpec::SymmetricDefault).await;
    let from = |authorization: Option<String>, address: &str| Credentials {
        authorization,
        source_address: Some(address.into()),
        request_id: "t".into(),
        ..Credentials::default()
    };
    let bad = Some("Bearer lbx_not-a-real-token".to_string());
    for port in 0..20 {
        check_err(
            f.kms
                .describe_key(&from(bad.clone(), &format!("192.0.2.7:{port}")), &key, &[])
                .await,
            "UnrecognizedClientException",
            "not a valid access token",
        );
    }
    check_err(
        f.kms
            .describe_key(&from(bad.clone(), "192.0.2.8:1"), &key, &[])
            .await,
        "UnrecognizedClientException",
        "",
    );
    f.kms
        .describe_key(
            &from(f.admin.authorization.clone(), "192.0.2.7:99"),
            &key,
            &[],
        )
        .await
        .expect("an authenticated call is not held back");
    let failed_from = |prefix: &str| {
        f.audit_lines()
            .iter()
            .filter(|r| {
                r["decision"] == "Unauthenticated"
                    && r["event_name"] == "DescribeKey"
                    && r["source_address"]
                        .as_str()
                        .is_some_and(|a| a.starts_with(prefix))
            })
            .count()
    };
    assert_eq!(failed_from("192.0.2.7:"), 1);
    assert_eq!(failed_from("192.0.2.8:"), 1);
    let allowed = f.last_record(|r| r["event_name"] == "DescribeKey");
    assert_eq!(allowed["decision"], "Allow");

    assert_eq!(f.kms.record_unrecorded_failures().await.unwrap(), 1);
    let counted = f.last_record(|r| r["event_name"] == UNRECORDED_FAILURES_EVENT);
    assert_eq!(counted["source_address"], "192.0.2.7");
    assert_eq!(counted["decision"], "Unauthenticated");
    assert_eq!(counted["error_code"], "ThrottlingException");
    let message = counted["error_message"].as_str().unwrap();
    assert!(
        message.starts_with("19 call(s) from 192.0.2.7"),
        "{message}"
    );
    assert_eq!(f.kms.record_unrecorded_failures().await.unwrap(), 0);

    // A bad credential a service forwards counts against the address the
    // service names, not against the service's own (nor the same
    // address's direct calls).
    let svc = f.user("table-service", PrincipalKind::Service, &[]).await;
    let forwarding = |forwarded_for: &str| Credentials {
        on_behalf_of: bad.clone(),
        forwarded_for: Some(forwarded_for.into()),
        source_address: Some("192.0.2.7:7000".into()),
        ..svc.clone()
    };
    for _ in 0..5 {
        check_err(
            f.kms
                .describe_key(&forwarding("198.51.100.9"), &key, &[])
                .await,
            "UnrecognizedClientException",
            "",
        );
    }
    check_err(
        f.kms
            .describe_key(&forwarding("198.51.100.10"), &key, &[])
            .await,
        "UnrecognizedClientException",
        "",
    );
    // One record each for the two callers' first failures; the other four
    // are counted against the first caller.
    assert_eq!(failed_from("192.0.2.7:7000"), 2);
    assert_eq!(f.kms.record_unrecorded_failures().await.unwrap(), 1);
    let counted = f.last_record(|r| r["event_name"] == UNRECORDED_FAILURES_EVENT);
    assert_eq!(
        counted["source_address"],
        "198.51.100.9 (forwarded by a service)"
    );
    assert!(
        counted["error_message"]
            .as_str()
            .unwrap()
            .starts_with("4 call(s)")
    );

    // With the limit off, every failure has its own record.
    let f = fixture().await;
    let f = Fixture {
        kms: f.kms.with_auth_failure_limit(0),
        ..f
    };
    let key = f.key(KeySpec::SymmetricDefault).await;
    for _ in 0..20 {
        check_err(
            f.kms
                .describe_key(&from(bad.clone(), "192.0.2.7:1"), &key, &[])
                .await,
            "UnrecognizedClientException",
            "",
        );
    }
    assert_eq!(
        f.audit_lines()
            .iter()
            .filter(|r| r["decision"] == "Unauthenticated")
            .count(),
        20
    );
    assert_eq!(f.kms.record_unrecorded_failures().await.unwrap(), 0);
}

/// The lockout check judges a policy with the condition keys a later
/// PutKeyPolicy by its author will carry: a policy whose only allow for
/// the author needs `kms:KeySpec` to be absent (it never is) would leave
/// the key unmanageable, and is refused.
#[tokio::test]
async fn the_lockout_check_sees_the_condition_keys_later_calls_carry() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let spec_absent = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Admin","Effect":"Allow",
      "Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*",
      "Condition":{"Null":{"kms:KeySpec":"true"}}}]}"#;
    let denies_spec = r#"{"Version":"2012-10-17","Statement":[
      {"Sid":"Admin","Effect":"Allow","Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*"},
      {"Sid":"NoSymmetric","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*",
       "Condition":{"StringEquals":{"kms:KeySpec":"SYMMETRIC_DEFAULT"}}}]}"#;
    let other_caller = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Admin","Effect":"Allow",
      "Principal":{"AWS":"user/admin"},"Action":"kms:*","Resource":"*",
      "Condition":{"StringEquals":{"kms:CallerPrincipal":"user/someone-else"}}}]}"#;
    for policy in [spec_absent, denies_spec, other_caller] {
        check_err(
            f.kms
                .put_key_policy(&f.admin, &key, "default", policy)
                .await,
            "MalformedPolicyDocumentException",
            "will not allow user/admin",
        );
        check_err(
            f.kms
                .create_key(
                    &f.admin,
                    CreateKeyInput {
                        description: String::new(),
                        spec: KeySpec::SymmetricDefault,
                        usage: None,
                        policy: Some(policy.to_string()),
                        tags: vec![],
                    },
                )
                .await,
            "MalformedPolicyDocumentException",
            "will not allow user/admin",
        );
    }
    // The key is still the administrator's to manage.
    f.kms
        .disable_key(&f.admin, &key)
        .await
        .expect("still manageable");
    // A Deny on another spec leaves this key manageable, so it is taken.
    let denies_hmac = denies_spec.replace("SYMMETRIC_DEFAULT", "HMAC_256");
    f.kms
        .put_key_policy(&f.admin, &key, "default", &denies_hmac)
        .await
        .expect("a deny on another spec does not lock the author out");
    f.kms
        .put_key_policy(&f.admin, &key, "default", &denies_hmac)
        .await
        .expect("and the author can still change the policy");
}

/// CreateKey is decided with the requested spec as `kms:KeySpec`, so a
/// policy can keep a principal to some kinds of key.
#[tokio::test]
async fn create_key_is_decided_with_the_requested_key_spec() {
    let f = fixture().await;
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let no_hmac = r#"{"Version":"2012-10-17","Statement":[
      {"Effect":"Allow","Action":"kms:*","Resource":"*"},
      {"Effect":"Deny","Action":"kms:CreateKey","Resource":"*",
       "Condition":{"StringLike":{"kms:KeySpec":"HMAC_*"}}}]}"#;
    f.kms
        .put_user_policy(&f.admin, "bob", "NoHmacKeys", no_hmac)
        .await
        .unwrap();
    let input = |spec| CreateKeyInput {
        description: String::new(),
        spec,
        usage: None,
        policy: None,
        tags: vec![],
    };
    check_err(
        f.kms.create_key(&bob, input(KeySpec::Hmac256)).await,
        "AccessDeniedException",
        "explicit deny",
    );
    f.kms
        .create_key(&bob, input(KeySpec::SymmetricDefault))
        .await
        .expect("a symmetric key is not denied");
}

/// A deleted principal's name is not given again while a grant names it,
/// as grantee or as the principal that may retire it: the new principal
/// would inherit the grant.
#[tokio::test]
async fn a_deleted_principals_name_is_not_reused_while_a_grant_names_it() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.user("carol", PrincipalKind::User, &[]).await;
    f.user("bob", PrincipalKind::User, &[]).await;
    let mut input = grant_input(&key, "user/carol", &[GrantOperation::Decrypt]);
    input.retiring = Some("user/bob".into());
    let grant = f.kms.create_grant(&f.admin, input).await.unwrap();
    f.kms.delete_user(&f.admin, "bob").await.unwrap();
    check_err(
        f.kms
            .create_user(&f.admin, "bob", Some(PrincipalKind::User))
            .await,
        "AlreadyExistsException",
        &format!(
            "a deleted user/bob is still named as grantee or retiring principal of 1 grant(s) ({})",
            grant.grant_id
        ),
    );
    // Deleting carol takes her grants with her, and with it the last one
    // naming bob.
    f.kms.delete_user(&f.admin, "carol").await.unwrap();
    f.user("bob", PrincipalKind::User, &[]).await;
    // A grant made to the deleted name after it was deleted, likewise.
    let to_deleted = f
        .kms
        .create_grant(
            &f.admin,
            grant_input(&key, "user/carol", &[GrantOperation::Encrypt]),
        )
        .await
        .unwrap();
    check_err(
        f.kms
            .create_user(&f.admin, "carol", Some(PrincipalKind::User))
            .await,
        "AlreadyExistsException",
        &to_deleted.grant_id,
    );
    // Once the grant is gone, the name is free.
    f.kms
        .revoke_grant(&f.admin, &key, &to_deleted.grant_id)
        .await
        .unwrap();
    f.user("carol", PrincipalKind::User, &[]).await;
}

/// `service/kms-service` is the name kms-service's own records carry; no
/// principal may be created under it.
#[tokio::test]
async fn the_services_own_name_is_reserved() {
    let f = fixture().await;
    for (name, kind) in [
        ("service/kms-service", None),
        ("kms-service", Some(PrincipalKind::Service)),
    ] {
        check_err(
            f.kms.create_user(&f.admin, name, kind).await,
            "ValidationException",
            "the name kms-service itself acts under",
        );
    }
    f.user("kms-service", PrincipalKind::User, &[]).await;
}

/// A description whose bytes would not leave the key's metadata room in an
/// answer (under a small `--max-message-bytes`) is refused before anything
/// is stored, rather than stored and then refused in every answer.
#[tokio::test]
async fn a_description_too_large_to_answer_is_refused_before_it_is_stored() {
    let f = fixture().await;
    f.kms.set_response_limit(16 * 1024);
    let keys = || async { f.kms.list_keys(&f.admin, 0, "").await.unwrap().items.len() };
    let before = keys().await;
    // 8150 characters (within the 8192 allowed), 16300 bytes.
    let long = "é".repeat(8150);
    let input = |description: &str| CreateKeyInput {
        description: description.to_string(),
        spec: KeySpec::SymmetricDefault,
        usage: None,
        policy: None,
        tags: vec![],
    };
    check_err(
        f.kms.create_key(&f.admin, input(&long)).await,
        "LimitExceededException",
        "description is 16300 bytes; the key's metadata must fit the 16384-byte answers",
    );
    assert_eq!(keys().await, before, "nothing was created");
    let key = f
        .kms
        .create_key(&f.admin, input(&"é".repeat(1000)))
        .await
        .expect("a description that fits")
        .key_id;
    check_err(
        f.kms.update_key_description(&f.admin, &key, &long).await,
        "LimitExceededException",
        "shorten it or raise that setting",
    );
    assert_eq!(
        f.kms
            .describe_key(&f.admin, &key, &[])
            .await
            .unwrap()
            .description,
        "é".repeat(1000)
    );
}

/// The records of CreateAccessToken and DeleteAccessToken name the token
/// (its id, never its secret), so the log tells which of a principal's
/// tokens was made or revoked.
#[tokio::test]
async fn token_records_name_the_token() {
    let f = fixture().await;
    f.user("bob", PrincipalKind::User, &[]).await;
    let second = f.kms.create_access_token(&f.admin, "bob").await.unwrap();
    let made = f.last_record(|r| r["event_name"] == "CreateAccessToken");
    let resources = made["resources"].to_string();
    assert!(
        resources.contains(&format!("token/{}", second.token_id)),
        "{made}"
    );
    assert!(!made.to_string().contains(second.token.as_str()), "{made}");
    f.kms
        .delete_access_token(&f.admin, "bob", &second.token_id)
        .await
        .unwrap();
    let revoked = f.last_record(|r| r["event_name"] == "DeleteAccessToken");
    assert!(
        revoked["resources"]
            .to_string()
            .contains(&format!("token/{}", second.token_id)),
        "{revoked}"
    );
    // A token id that cannot be one is not named among the resources.
    let odd = "not a token id ".repeat(10);
    assert!(
        f.kms
            .delete_access_token(&f.admin, "bob", &odd)
            .await
            .is_err()
    );
    let refused = f.last_record(|r| r["event_name"] == "DeleteAccessToken");
    assert_eq!(refused["resources"], serde_json::json!(["user/bob"]));
}

/// Nothing secret reaches the disk in clear: the backing keys are stored
/// only wrapped by the root key, and no plaintext, data key or access
/// token is in the key store (database and WAL) or the audit log, raw,
/// in hex or in base64.
#[tokio::test]
async fn no_secret_reaches_the_disk_in_clear() {
    use base64::Engine;
    let (f, root) = forgetful_fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let mac = f.key(KeySpec::Hmac256).await;
    f.kms.rotate_key_on_demand(&f.admin, &key).await.unwrap();
    let plaintext = b"plaintext that must stay secret 4f1c";
    let context = ctx(&[("purpose", "disk test")]);
    let blob = f.blob(&key, plaintext, &context).await;
    let data_key = f
        .kms
        .generate_data_key(&f.admin, &key, &context, DataKeyLength::Aes256, &[])
        .await
        .unwrap();
    f.kms
        .generate_mac(&f.admin, &mac, plaintext, MacAlgorithm::HmacSha256, &[])
        .await
        .unwrap();
    let user = f
        .kms
        .create_user(&f.admin, "carol", Some(PrincipalKind::User))
        .await
        .unwrap();
    let token = f
        .kms
        .create_access_token(&f.admin, &user.principal)
        .await
        .unwrap();
    assert_eq!(
        &f.kms
            .decrypt(&f.admin, &blob, &context, "", &[])
            .await
            .unwrap()
            .plaintext[..],
        plaintext
    );

    let mut secrets: Vec<(String, Vec<u8>)> = root
        .wrapped
        .lock()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("backing key {i}"), m.clone()))
        .collect();
    assert!(secrets.len() >= 3, "two versions of one key, one MAC key");
    secrets.push(("plaintext".into(), plaintext.to_vec()));
    secrets.push(("data key".into(), data_key.plaintext[..].to_vec()));
    secrets.push(("access token".into(), token.token.as_bytes().to_vec()));
    let forms = |secret: &[u8]| {
        [
            secret.to_vec(),
            hex::encode(secret).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(secret)
                .into_bytes(),
        ]
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(f.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push(path);
        }
    }
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in ["kms.db", "kms.db-wal", "audit.jsonl"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // The search sees what is stored: the key's id in the store, the new
    // user in the audit log.
    let read = |name: &str| std::fs::read(f.dir.path().join(name)).unwrap();
    assert!(
        contains(&read("kms.db"), key.as_bytes()) || contains(&read("kms.db-wal"), key.as_bytes())
    );
    assert!(contains(&read("audit.jsonl"), b"user/carol"));
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        for (what, secret) in &secrets {
            for form in forms(secret) {
                assert!(
                    !contains(&bytes, &form),
                    "{what} is in {} in clear",
                    file.display()
                );
            }
        }
    }
}

/// Every call that changes a key, made without a usable credential
/// (missing, malformed, unknown, revoked) or by a principal the key's
/// policy does not name, is refused, changes nothing the API shows, and
/// has one audit record with its refusal.
#[tokio::test]
async fn refused_changes_change_nothing_and_are_each_recorded() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.kms
        .create_alias(&f.admin, "alias/kept", &key)
        .await
        .unwrap();
    let bob = f.user("bob", PrincipalKind::User, &[]).await;
    let revoked = f
        .kms
        .create_access_token(&f.admin, "user/bob")
        .await
        .unwrap();
    f.kms
        .delete_access_token(&f.admin, "bob", &revoked.token_id)
        .await
        .unwrap();
    let snapshot = async || {
        let a = &f.admin;
        [
            format!("{:?}", f.kms.describe_key(a, &key, &[]).await),
            format!("{:?}", f.kms.get_key_policy(a, &key, "default").await),
            format!("{:?}", f.kms.list_aliases(a, "", 100, "").await),
            format!("{:?}", f.kms.list_resource_tags(a, &key, 100, "").await),
            format!("{:?}", f.kms.list_grants(a, &key, "", "", 100, "").await),
            format!("{:?}", f.kms.get_key_rotation_status(a, &key).await),
            format!("{:?}", f.kms.list_key_rotations(a, &key, 100, "").await),
        ]
    };
    let before = snapshot().await;
    let callers: [(&str, Credentials, &str); 5] = [
        (
            "no credential",
            Credentials::default(),
            "MissingAuthenticationTokenException",
        ),
        (
            "a malformed credential",
            Credentials {
                authorization: Some("Basic Ym9iOnB3".into()),
                ..Credentials::default()
            },
            "IncompleteSignatureException",
        ),
        (
            "an unknown token",
            creds("lbx_not-a-real-token"),
            "UnrecognizedClientException",
        ),
        (
            "a revoked token",
            creds(&revoked.token),
            "UnrecognizedClientException",
        ),
        ("bob", bob, "AccessDeniedException"),
    ];
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#;
    let records = || f.audit_lines().len();
    for (who, c, reason) in &callers {
        let before_records = records();
        let refusals: Vec<(&str, Result<(), KmsError>)> = vec![
            (
                "ScheduleKeyDeletion",
                f.kms
                    .schedule_key_deletion(c, &key, Some(7))
                    .await
                    .map(drop),
            ),
            ("DisableKey", f.kms.disable_key(c, &key).await),
            (
                "PutKeyPolicy",
                f.kms.put_key_policy(c, &key, "default", policy).await,
            ),
            (
                "CreateAlias",
                f.kms.create_alias(c, "alias/taken-over", &key).await,
            ),
            (
                "TagResource",
                f.kms
                    .tag_resource(c, &key, &[("owner".into(), "mallory".into())])
                    .await,
            ),
            (
                "EnableKeyRotation",
                f.kms.enable_key_rotation(c, &key, Some(90)).await,
            ),
            (
                "UpdateKeyDescription",
                f.kms.update_key_description(c, &key, "mine now").await,
            ),
            (
                "RotateKeyOnDemand",
                f.kms.rotate_key_on_demand(c, &key).await.map(drop),
            ),
            (
                "CreateGrant",
                f.kms
                    .create_grant(
                        c,
                        CreateGrantInput {
                            key_id: key.clone(),
                            grantee: "user/bob".into(),
                            retiring: None,
                            operations: vec![GrantOperation::Decrypt],
                            constraints: GrantConstraints::default(),
                            name: String::new(),
                            grant_tokens: vec![],
                        },
                    )
                    .await
                    .map(drop),
            ),
        ];
        let calls = refusals.len();
        for (call, result) in refusals {
            match result {
                Err(e) => assert_eq!(e.reason(), *reason, "{call} with {who}: {e}"),
                Ok(()) => panic!("{call} with {who} was allowed"),
            }
        }
        let lines = f.audit_lines();
        assert_eq!(
            lines.len() - before_records,
            calls,
            "one record per refused call by {who}"
        );
        for record in &lines[before_records..] {
            let expected = if *reason == "AccessDeniedException" {
                "Deny"
            } else {
                "Unauthenticated"
            };
            assert_eq!(record["decision"], expected, "{record}");
            assert_eq!(record["error_code"], *reason, "{record}");
        }
        assert_eq!(
            snapshot().await,
            before,
            "a refused call by {who} changed something"
        );
    }
}

/// A request cannot make its audit record as large as itself: error
/// messages that quote what was sent are bounded like the status the
/// caller gets, and a grant id that cannot be one is shortened. (A
/// 256 KiB name of `"` characters made a record of about 1 MiB: escaped
/// once in the message, again in JSON.)
#[tokio::test]
async fn records_of_refused_requests_stay_small_whatever_they_quote() {
    let f = fixture().await;
    let nobody = f.user("nobody", PrincipalKind::User, &[]).await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    let quotes = "\"".repeat(256 * 1024);
    let long_id = "g".repeat(100_000);

    let refused = f.kms.get_user(&nobody, &quotes).await.unwrap_err();
    assert_eq!(refused.reason(), "ValidationException");
    let record = f.last_record(|r| r["event_name"] == "GetUser");
    let message = record["error_message"].as_str().expect("a message");
    assert!(
        message.ends_with(&format!(
            "… (message cut; it was {} bytes)",
            refused.to_string().len()
        )),
        "{message:.200}"
    );
    assert!(message.len() <= 1100, "{}", message.len());
    assert!(
        record.to_string().len() < 4096,
        "{}",
        record.to_string().len()
    );

    for creds in [&nobody, &f.admin] {
        assert!(f.kms.revoke_grant(creds, &key, &long_id).await.is_err());
        let record = f.last_record(|r| r["event_name"] == "RevokeGrant");
        assert_eq!(
            record["grant_id"],
            format!("{}… (100000 bytes)", "g".repeat(64)),
            "{record:.300}"
        );
        assert!(
            record.to_string().len() < 4096,
            "{}",
            record.to_string().len()
        );
    }
    // A grant id of the right length is recorded as given.
    let plausible = "ab".repeat(32);
    assert!(
        f.kms
            .revoke_grant(&f.admin, &key, &plausible)
            .await
            .is_err()
    );
    let record = f.last_record(|r| r["event_name"] == "RevokeGrant");
    assert_eq!(record["grant_id"], plausible.as_str());

    // Short messages are recorded whole.
    let refused = f.kms.get_user(&f.admin, "ghost").await.unwrap_err();
    let record = f.last_record(|r| r["event_name"] == "GetUser");
    assert_eq!(record["error_message"], refused.to_string().as_str());
}

/// A destroyed key's wrapped material is gone from every file of the data
/// directory, not only from what the store loads: SQLite overwrites deleted
/// rows (`secure_delete`) and the WAL, which still held the pages as they
/// were, is checkpointed and emptied.
#[tokio::test]
async fn a_destroyed_keys_material_is_in_no_file() {
    let f = fixture().await;
    let key = f.key(KeySpec::SymmetricDefault).await;
    f.kms.rotate_key_on_demand(&f.admin, &key).await.unwrap();
    let kept = f.key(KeySpec::SymmetricDefault).await;
    let wrapped_of = |key_id: &str| -> Vec<Vec<u8>> {
        let db = rusqlite::Connection::open(f.dir.path().join("kms.db")).unwrap();
        let mut stmt = db
            .prepare("SELECT wrapped FROM key_versions WHERE key_id = ?1")
            .unwrap();
        stmt.query_map([key_id], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let material = wrapped_of(&key);
    assert_eq!(material.len(), 2);
    let other = wrapped_of(&kept);
    let files = || -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let holds = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    // Before: the search finds it.
    assert!(
        files()
            .iter()
            .any(|(_, bytes)| material.iter().all(|m| holds(bytes, m)))
    );

    f.kms
        .schedule_key_deletion(&f.admin, &key, Some(7))
        .await
        .unwrap();
    f.clock.advance(7 * DAY);
    assert_eq!(
        f.kms.run_maintenance().await.unwrap().destroyed,
        vec![key.clone()]
    );
    for (name, bytes) in files() {
        for m in &material {
            assert!(!holds(&bytes, m), "{name} still holds a destroyed version");
        }
    }
    // The other key's material is where it was.
    assert!(
        files()
            .iter()
            .any(|(_, bytes)| other.iter().all(|m| holds(bytes, m)))
    );
    let blob = f.blob(&kept, b"still here", &ctx(&[])).await;
    assert_eq!(
        f.kms
            .decrypt(&f.admin, &blob, &ctx(&[]), "", &[])
            .await
            .unwrap()
            .plaintext
            .as_slice(),
        b"still here"
    );
}
