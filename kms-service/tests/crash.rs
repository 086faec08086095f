//! `kill -9` of the real binary during concurrent CreateKey / Encrypt /
//! GenerateDataKey load: after a restart, every acknowledged key exists, every
//! acknowledged ciphertext decrypts to what was acknowledged, the audit log
//! verifies, and it holds a record for every acknowledged call.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockbox_proto::kms::v1 as pb;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_kms-service");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn(dir: &std::path::Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kms-service")
}

/// A channel to the service once it answers health checks: it listens
/// before it has opened its data directory (and written the token file).
async fn connect(port: u16) -> Channel {
    let addr = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match kms_service::healthcheck::check(&addr, None, kms_service::healthcheck::DEADLINE).await
        {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("kms-service did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Channel::from_shared(addr)
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn request<T>(token: &str, id: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("token"),
    );
    r.metadata_mut()
        .insert("x-request-id", id.parse().expect("id"));
    r
}

#[derive(Default)]
struct Acked {
    keys: Vec<String>,
    /// (blob, plaintext, context value)
    blobs: Vec<(Vec<u8>, Vec<u8>, String)>,
    request_ids: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = spawn(dir.path(), port);
    let ch = connect(port).await;
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .expect("token")
        .trim()
        .to_string();
    let mut client = KeyManagementServiceClient::new(ch.clone());
    let first = client
        .create_key(request(&token, "setup", pb::CreateKeyRequest::default()))
        .await
        .expect("create key")
        .into_inner()
        .key_metadata
        .expect("metadata")
        .key_id;

    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut workers = Vec::new();
    for w in 0..16 {
        let (ch, token, key, acked) = (ch.clone(), token.clone(), first.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut client = KeyManagementServiceClient::new(ch);
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let ctx = HashMap::from([("n".to_string(), id.clone())]);
                let result = match i % 3 {
                    0 => client
                        .create_key(request(&token, &id, pb::CreateKeyRequest::default()))
                        .await
                        .map(|r| {
                            let k = r
                                .into_inner()
                                .key_metadata
                                .map(|m| m.key_id)
                                .unwrap_or_default();
                            acked.lock().unwrap().keys.push(k);
                        }),
                    1 => client
                        .encrypt(request(
                            &token,
                            &id,
                            pb::EncryptRequest {
                                key_id: key.clone(),
                                plaintext: id.as_bytes().to_vec(),
                                encryption_context: ctx,
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|r| {
                            acked.lock().unwrap().blobs.push((
                                r.into_inner().ciphertext_blob,
                                id.as_bytes().to_vec(),
                                id.clone(),
                            ))
                        }),
                    _ => client
                        .generate_data_key(request(
                            &token,
                            &id,
                            pb::GenerateDataKeyRequest {
                                key_id: key.clone(),
                                encryption_context: ctx,
                                key_spec: pb::DataKeySpec::Aes256.into(),
                                ..Default::default()
                            },
                        ))
                        .await
                        .map(|r| {
                            let r = r.into_inner();
                            acked.lock().unwrap().blobs.push((
                                r.ciphertext_blob,
                                r.plaintext,
                                id.clone(),
                            ));
                        }),
                };
                match result {
                    Ok(()) => acked.lock().unwrap().request_ids.push(id),
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    for w in workers {
        let _ = w.await;
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.request_ids.len() > 30,
        "load too light to mean anything: {}",
        acked.request_ids.len()
    );

    let mut child = spawn(dir.path(), port);
    let mut client = KeyManagementServiceClient::new(connect(port).await);
    for key in &acked.keys {
        client
            .describe_key(request(
                &token,
                "check",
                pb::DescribeKeyRequest {
                    key_id: key.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged key {key} lost: {e}"));
        // Its key material too: it encrypts and decrypts.
        let blob = client
            .encrypt(request(
                &token,
                "check",
                pb::EncryptRequest {
                    key_id: key.clone(),
                    plaintext: b"after the crash".to_vec(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged key {key} does not encrypt: {e}"))
            .into_inner()
            .ciphertext_blob;
        let opened = client
            .decrypt(request(
                &token,
                "check",
                pb::DecryptRequest {
                    ciphertext_blob: blob,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged key {key} does not decrypt: {e}"))
            .into_inner();
        assert_eq!(
            (opened.key_id.as_str(), opened.plaintext.as_slice()),
            (key.as_str(), &b"after the crash"[..])
        );
    }
    for (blob, plaintext, n) in &acked.blobs {
        let got = client
            .decrypt(request(
                &token,
                "check",
                pb::DecryptRequest {
                    ciphertext_blob: blob.clone(),
                    encryption_context: HashMap::from([("n".to_string(), n.clone())]),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("acknowledged ciphertext {n} does not decrypt: {e}"))
            .into_inner()
            .plaintext;
        assert_eq!(&got, plaintext);
    }
    child.kill().expect("stop");
    child.wait().expect("reap");

    let log = dir.path().join("audit/audit.jsonl");
    let verify = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&log)
        .arg("--root-key-file")
        .arg(dir.path().join("root.key"))
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = std::fs::read_to_string(&log).expect("audit log");
    // Each acknowledged call has its record: the right event, allowed.
    let recorded: HashMap<String, (String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let id = v["request_id"].as_str()?.to_string();
            let event = v["event_name"].as_str()?.to_string();
            let decision = v["decision"].as_str()?.to_string();
            Some((id, (event, decision)))
        })
        .collect();
    for id in &acked.request_ids {
        let i: usize = id.rsplit('-').next().unwrap().parse().unwrap();
        let event = ["CreateKey", "Encrypt", "GenerateDataKey"][i % 3];
        assert_eq!(
            recorded.get(id),
            Some(&(event.to_string(), "Allow".to_string())),
            "acknowledged call {id}'s audit record"
        );
    }
    eprintln!(
        "acknowledged: {} keys, {} ciphertexts, {} calls",
        acked.keys.len(),
        acked.blobs.len(),
        acked.request_ids.len()
    );
}
