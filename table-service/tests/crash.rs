//! `kill -9` of the table-service binary under concurrent PutItem load, with
//! kms-service running in this process: after a restart on the same data
//! directory every acknowledged put is there, decrypts, and holds the last
//! acknowledged value for its key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use tonic::transport::Channel;

const TASKS: usize = 16;
/// Keys per task: each key is overwritten many times.
const KEYS_PER_TASK: u64 = 4;
const LOAD: Duration = Duration::from_millis(1500);

/// The binary; killed (SIGKILL) and reaped when dropped.
struct Binary {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, kms: SocketAddr, run: &str) -> Binary {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = dir.join(format!("table-service.{run}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_table-service"))
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.join("tables"))
        .arg("--kms-endpoint")
        .arg(format!("http://{kms}"))
        .arg("--token-file")
        .arg(dir.join("kms/table-service.token"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("table-service binary starts");
    Binary { child, addr, log }
}

async fn connect(binary: &mut Binary) -> TableServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            panic!(
                "table-service exited with {status}: {}",
                std::fs::read_to_string(&binary.log).unwrap_or_default()
            );
        }
        match Channel::from_shared(format!("http://{}", binary.addr))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => return TableServiceClient::new(channel),
            Err(e) if Instant::now() > deadline => panic!("table-service never listened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn s(x: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        value: Some(pb::attribute_value::Value::S(x.into())),
    }
}

fn text(item: &HashMap<String, pb::AttributeValue>, name: &str) -> String {
    match item.get(name).and_then(|v| v.value.as_ref()) {
        Some(pb::attribute_value::Value::S(x)) => x.clone(),
        other => panic!("{name}: expected S, got {other:?}"),
    }
}

fn put(key: &str, value: &str) -> pb::PutItemRequest {
    pb::PutItemRequest {
        table_name: "crash".into(),
        item: HashMap::from([("id".to_string(), s(key)), ("value".to_string(), s(value))]),
        ..Default::default()
    }
}

/// What one writer saw: its acknowledged puts in order, and the put that was
/// in flight (or refused) when the server died.
struct Writes {
    acked: Vec<(String, String)>,
    unacked: Option<(String, String)>,
}

async fn writer(
    mut client: TableServiceClient<Channel>,
    token: String,
    task: usize,
    stop: Arc<AtomicBool>,
) -> Writes {
    let mut writes = Writes {
        acked: Vec::new(),
        unacked: None,
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let key = format!("t{task}-k{}", seq % KEYS_PER_TASK);
        let value = format!("{key}#{seq}");
        match client.put_item(authed(&token, put(&key, &value))).await {
            Ok(_) => writes.acked.push((key, value)),
            Err(_) => {
                writes.unacked = Some((key, value));
                break;
            }
        }
        seq += 1;
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_puts_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut kms_config = KmsConfig::for_data_dir(dir.path().join("kms"));
    kms_config.storage.table_service_token_file = Some(dir.path().join("kms/table-service.token"));
    let kms = KmsServer::start(kms_config)
        .await
        .expect("kms-service starts");
    let admin = std::fs::read_to_string(dir.path().join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();

    let mut first = spawn(dir.path(), kms.addr, "first");
    let mut client = connect(&mut first).await;
    client
        .create_table(authed(
            &admin,
            pb::CreateTableRequest {
                table_name: "crash".into(),
                key_schema: Some(pb::KeySchema {
                    partition_key: Some(pb::KeyElement {
                        name: "id".into(),
                        r#type: pb::ScalarType::S.into(),
                    }),
                    sort_key: None,
                }),
                sse_specification: None,
            },
        ))
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(writer(client.clone(), admin.clone(), task, stop.clone())))
        .collect();
    tokio::time::sleep(LOAD).await;
    first.child.kill().expect("kill -9");
    first.child.wait().unwrap();
    stop.store(true, Ordering::Release);

    // Per key: the last acknowledged value, and a later unacknowledged one
    // that may or may not have been committed before the kill.
    let mut last_acked: HashMap<String, String> = HashMap::new();
    let mut unacked: HashMap<String, String> = HashMap::new();
    let mut acked_count = 0;
    for w in writers {
        let writes = w.await.unwrap();
        acked_count += writes.acked.len();
        last_acked.extend(writes.acked);
        if let Some((key, value)) = writes.unacked {
            unacked.insert(key, value);
        }
    }
    assert!(
        acked_count > 50,
        "only {acked_count} puts were acknowledged"
    );
    drop(client);

    let mut second = spawn(dir.path(), kms.addr, "second");
    let mut client = connect(&mut second).await;
    for (key, value) in &last_acked {
        let got = client
            .get_item(authed(
                &admin,
                pb::GetItemRequest {
                    table_name: "crash".into(),
                    key: HashMap::from([("id".to_string(), s(key))]),
                },
            ))
            .await
            .unwrap_or_else(|e| panic!("{key} does not read back: {e:?}"))
            .into_inner()
            .item;
        assert!(!got.is_empty(), "acknowledged {key} = {value} is lost");
        let stored = text(&got, "value");
        assert!(
            stored == *value || unacked.get(key) == Some(&stored),
            "{key}: acknowledged {value}, found {stored}"
        );
    }

    // Every stored item decrypts and records its own key; nothing else is there.
    let mut seen = 0;
    let mut start = HashMap::new();
    loop {
        let page = client
            .scan(authed(
                &admin,
                pb::ScanRequest {
                    table_name: "crash".into(),
                    exclusive_start_key: start,
                    ..Default::default()
                },
            ))
            .await
            .expect("every stored item decrypts")
            .into_inner();
        for item in &page.items {
            let key = text(&item.attributes, "id");
            let value = text(&item.attributes, "value");
            assert!(value.starts_with(&format!("{key}#")), "{key} holds {value}");
            assert!(
                last_acked.get(&key) == Some(&value) || unacked.get(&key) == Some(&value),
                "{key} holds {value}, which was never written last"
            );
            seen += 1;
        }
        if page.last_evaluated_key.is_empty() {
            break;
        }
        start = page.last_evaluated_key;
    }
    assert!(seen >= last_acked.len());
    assert!(seen <= last_acked.len() + unacked.len());

    // The restarted service takes writes.
    client
        .put_item(authed(&admin, put("after", "after#0")))
        .await
        .unwrap();
    drop(second);
    kms.stop().await.unwrap();
}
