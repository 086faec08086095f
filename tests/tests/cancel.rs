//! A caller that goes away (its deadline passes, it resets the stream) after
//! table-service queued a commit for it: the work is still seen through, so
//! what is on disk and what the service holds in memory never part ways.
//! table-service runs in process over a store whose commits wait at a gate,
//! with kms-service running beside it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_server::TableService;
use table_service::config::ServeConfig as TableConfig;
use table_service::grpc::TableGrpc;
use table_service::model::ItemKey;
use table_service::service::Tables;
use table_service::store::sqlite::SqliteTableStore;
use table_service::store::{
    Mutation, RangeQuery, ScanQuery, StoreError, StoredItem, TableRecord, TableStore,
};
use tonic_types::StatusExt;

/// Commits wait while the gate is shut; each commit that reaches the gate
/// is counted.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    /// Shuts the gate; returns how many commits reached it so far.
    fn shut(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        state.1
    }

    fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.changed.notify_all();
    }

    /// Blocks a commit while shut.
    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.changed.notify_all();
        while state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// Waits (off the runtime) until `n` commits have reached the gate.
    async fn reached(self: &Arc<Self>, n: usize) {
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let state = gate.state.lock().unwrap();
            let (_state, timeout) = gate
                .changed
                .wait_timeout_while(state, Duration::from_secs(10), |s| s.1 < n)
                .unwrap();
            assert!(!timeout.timed_out(), "no commit reached the gate");
        })
        .await
        .unwrap();
    }
}

struct GatedStore {
    inner: SqliteTableStore,
    gate: Arc<Gate>,
}

impl TableStore for GatedStore {
    fn load_tables(&self) -> Result<Vec<TableRecord>, StoreError> {
        self.inner.load_tables()
    }
    fn commit(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        self.gate.pass();
        self.inner.commit(batch)
    }
    fn get_item(&self, table_id: &str, key: &ItemKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_item(table_id, key)
    }
    fn query(&self, query: &RangeQuery) -> Result<Vec<StoredItem>, StoreError> {
        self.inner.query(query)
    }
    fn scan(&self, query: &ScanQuery) -> Result<Vec<StoredItem>, StoreError> {
        self.inner.scan(query)
    }
    fn count_items(&self, table_id: &str) -> Result<u64, StoreError> {
        self.inner.count_items(table_id)
    }
    fn dropped_tables(&self) -> Result<Vec<String>, StoreError> {
        self.inner.dropped_tables()
    }
}

struct Stack {
    _kms: KmsServer,
    tables: Arc<Tables>,
    grpc: Arc<TableGrpc>,
    gate: Arc<Gate>,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn start() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let mut kms_config = KmsConfig::for_data_dir(dir.path().join("kms"));
    kms_config.storage.table_service_token_file = Some(dir.path().join("kms/table-service.token"));
    let kms = KmsServer::start(kms_config).await.unwrap();
    let config = TableConfig::for_data_dir(
        dir.path().join("tables"),
        format!("http://{}", kms.addr),
        dir.path().join("kms/table-service.token"),
    );
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let gate = Arc::new(Gate::default());
    let store = GatedStore {
        inner: SqliteTableStore::open(&config.data_dir.join("tables.db")).unwrap(),
        gate: gate.clone(),
    };
    let kms_client = table_service::server::kms_client(&config).unwrap();
    let tables = Tables::open(Arc::new(store), kms_client, config.tables_config()).unwrap();
    let admin = std::fs::read_to_string(dir.path().join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    Stack {
        _kms: kms,
        grpc: Arc::new(TableGrpc::new(tables.clone())),
        tables,
        gate,
        admin,
        _dir: dir,
    }
}

/// A failed test still opens the gate, so the store's commit thread (which
/// dropping the service joins) is not left waiting at it.
impl Drop for Stack {
    fn drop(&mut self) {
        self.gate.open();
    }
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn create(name: &str) -> pb::CreateTableRequest {
    pb::CreateTableRequest {
        table_name: name.into(),
        key_schema: Some(pb::KeySchema {
            partition_key: Some(pb::KeyElement {
                name: "id".into(),
                r#type: pb::ScalarType::S.into(),
            }),
            sort_key: None,
        }),
        sse_specification: None,
    }
}

fn av(value: pb::attribute_value::Value) -> pb::AttributeValue {
    pb::AttributeValue { value: Some(value) }
}

fn key(id: &str) -> HashMap<String, pb::AttributeValue> {
    HashMap::from([(
        "id".to_string(),
        av(pb::attribute_value::Value::S(id.into())),
    )])
}

/// `n` of the item, read back.
async fn counter(stack: &Stack, table: &str, id: &str) -> String {
    let item = stack
        .grpc
        .get_item(authed(
            &stack.admin,
            pb::GetItemRequest {
                table_name: table.into(),
                key: key(id),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .item;
    match item.get("n").and_then(|v| v.value.clone()) {
        Some(pb::attribute_value::Value::N(n)) => n,
        other => panic!("n is {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_table_whose_caller_left_after_its_commit_was_queued_still_takes_effect() {
    let stack = start().await;
    let before = stack.gate.shut();
    let call = {
        let (grpc, admin) = (stack.grpc.clone(), stack.admin.clone());
        tokio::spawn(async move { grpc.create_table(authed(&admin, create("orders"))).await })
    };
    stack.gate.reached(before + 1).await;
    // The caller goes away while its commit waits.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    stack.gate.open();

    // The table exists in memory as on disk: a second CreateTable is told
    // so (before, it minted a new table under the same name, whose commit
    // failed and stopped every write until a restart).
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        stack
            .grpc
            .create_table(authed(&stack.admin, create("orders"))),
    )
    .await
    .expect("CreateTable answers")
    .unwrap_err();
    assert_eq!(
        again.get_details_error_info().map(|i| i.reason).as_deref(),
        Some("ResourceInUseException"),
        "{again:?}"
    );
    assert_eq!(stack.tables.fault(), None);
    stack
        .grpc
        .put_item(authed(
            &stack.admin,
            pb::PutItemRequest {
                table_name: "orders".into(),
                item: key("a"),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_caller_left_keeps_its_item_locked_until_its_commit_ends() {
    let stack = start().await;
    stack
        .grpc
        .create_table(authed(&stack.admin, create("counters")))
        .await
        .unwrap();
    let add_one = || pb::UpdateItemRequest {
        table_name: "counters".into(),
        key: key("c"),
        actions: vec![pb::UpdateAction {
            action: Some(pb::update_action::Action::Add(pb::SetAction {
                attribute: "n".into(),
                value: Some(av(pb::attribute_value::Value::N("1".into()))),
            })),
        }],
        ..Default::default()
    };
    let before = stack.gate.shut();
    let first = {
        let (grpc, admin, request) = (stack.grpc.clone(), stack.admin.clone(), add_one());
        tokio::spawn(async move { grpc.update_item(authed(&admin, request)).await })
    };
    stack.gate.reached(before + 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The second ADD must read what the first one commits, not the item
    // from before it.
    let second = {
        let (grpc, admin, request) = (stack.grpc.clone(), stack.admin.clone(), add_one());
        tokio::spawn(async move { grpc.update_item(authed(&admin, request)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.gate.open();
    second.await.unwrap().unwrap();
    assert_eq!(counter(&stack, "counters", "c").await, "2");
}

/// Shutdown waits for a write still running whose caller left: the service
/// (and its store) is let go only once the write ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_write_whose_caller_left() {
    let stack = start().await;
    stack
        .grpc
        .create_table(authed(&stack.admin, create("late")))
        .await
        .unwrap();
    let before = stack.gate.shut();
    let put = {
        let (grpc, admin) = (stack.grpc.clone(), stack.admin.clone());
        tokio::spawn(async move {
            grpc.put_item(authed(
                &admin,
                pb::PutItemRequest {
                    table_name: "late".into(),
                    item: key("k"),
                    ..Default::default()
                },
            ))
            .await
        })
    };
    stack.gate.reached(before + 1).await;
    put.abort();
    let stop = {
        let tables = stack.tables.clone();
        tokio::spawn(async move { tables.stop_jobs().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stop.is_finished(), "shutdown did not wait for the write");
    stack.gate.open();
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("shutdown ends once the write did")
        .unwrap();
    let got = stack
        .grpc
        .get_item(authed(
            &stack.admin,
            pb::GetItemRequest {
                table_name: "late".into(),
                key: key("k"),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.item, key("k"));
}
