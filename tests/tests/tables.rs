//! table-service end to end over gRPC (admin token), with kms-service running
//! in the same process: the data model round trip, validation errors,
//! conditional writes and updates, Query and Scan paging, batches, envelope
//! integrity against rows moved inside the SQLite file, and behaviour while
//! kms-service is down.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use kms_service::config::ServeConfig as KmsConfig;
use kms_service::server::RunningServer as KmsServer;
use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use pb::ComparisonOperator as Op;
use pb::ScalarType::{B, N, S};
use pb::attribute_value::Value as V;
use table_service::config::ServeConfig as TableConfig;
use table_service::server::RunningServer as TableServer;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Av = pb::AttributeValue;
type Item = HashMap<String, Av>;

// ---------------------------------------------------------------- the stack

#[path = "support/raw.rs"]
mod raw;
#[path = "support/reflection.rs"]
mod reflection;

struct Stack {
    /// `None` while a test has kms-service stopped.
    kms: Option<KmsServer>,
    tables: TableServer,
    client: TableServiceClient<Channel>,
    admin: String,
    dir: tempfile::TempDir,
}

fn kms_config(dir: &Path) -> KmsConfig {
    let mut config = KmsConfig::for_data_dir(dir.join("kms"));
    config.storage.table_service_token_file = Some(dir.join("kms/table-service.token"));
    config
}

/// Both services on ephemeral ports; `tweak` adjusts table-service's config
/// (the allow cache is off unless `tweak` turns it on).
async fn start_with(tweak: impl FnOnce(&mut TableConfig)) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let kms = KmsServer::start(kms_config(dir.path()))
        .await
        .expect("kms-service starts");
    let mut config = TableConfig::for_data_dir(
        dir.path().join("tables"),
        format!("http://{}", kms.addr),
        dir.path().join("kms/table-service.token"),
    );
    config.authz_cache_ttl_secs = 0;
    tweak(&mut config);
    let tables = TableServer::start(config)
        .await
        .expect("table-service starts");
    let admin = std::fs::read_to_string(dir.path().join("kms/admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let channel = Channel::from_shared(format!("http://{}", tables.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Stack {
        kms: Some(kms),
        tables,
        client: TableServiceClient::new(channel),
        admin,
        dir,
    }
}

async fn start() -> Stack {
    start_with(|_| {}).await
}

fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

impl Stack {
    fn c(&self) -> TableServiceClient<Channel> {
        self.client.clone()
    }

    /// A connection to kms-service, which must run.
    async fn kms_channel(&self) -> Channel {
        let kms = self.kms.as_ref().expect("kms-service runs");
        Channel::from_shared(format!("http://{}", kms.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Makes user `name` with the managed policies `policies`, as the
    /// administrator; returns its token.
    async fn user(&self, name: &str, policies: &[&str]) -> String {
        use lockbox_proto::iam::v1 as iam;
        use lockbox_proto::iam::v1::identity_service_client::IdentityServiceClient;
        let mut iam_client = IdentityServiceClient::new(self.kms_channel().await);
        iam_client
            .create_user(self.req(iam::CreateUserRequest {
                user_name: name.into(),
                kind: 0,
            }))
            .await
            .unwrap();
        for policy in policies {
            iam_client
                .attach_user_policy(self.req(iam::AttachUserPolicyRequest {
                    user_name: name.into(),
                    policy_name: (*policy).into(),
                }))
                .await
                .unwrap();
        }
        iam_client
            .create_access_token(self.req(iam::CreateAccessTokenRequest {
                user_name: name.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Stops kms-service; returns the address it listened on.
    async fn stop_kms(&mut self) -> std::net::SocketAddr {
        let kms = self.kms.take().expect("kms-service runs");
        let addr = kms.addr;
        kms.stop().await.unwrap();
        addr
    }

    /// Starts kms-service again on its data directory and address.
    async fn restart_kms(&mut self, addr: std::net::SocketAddr) {
        let mut config = kms_config(self.dir.path());
        config.listen = addr;
        self.kms = Some(
            KmsServer::start(config)
                .await
                .expect("kms-service restarts"),
        );
    }

    fn req<T>(&self, message: T) -> tonic::Request<T> {
        authed(&self.admin, message)
    }

    async fn create(
        &self,
        name: &str,
        pk: (&str, pb::ScalarType),
        sk: Option<(&str, pb::ScalarType)>,
    ) -> pb::TableDescription {
        self.c()
            .create_table(self.req(create_request(name, pk, sk)))
            .await
            .unwrap()
            .into_inner()
            .table_description
            .unwrap()
    }

    async fn put(&self, table: &str, item: Item) {
        self.c()
            .put_item(self.req(pb::PutItemRequest {
                table_name: table.into(),
                item,
                ..Default::default()
            }))
            .await
            .unwrap();
    }

    async fn try_put(
        &self,
        table: &str,
        item: Item,
        conditions: Vec<pb::Condition>,
    ) -> Result<Item, Status> {
        self.c()
            .put_item(self.req(pb::PutItemRequest {
                table_name: table.into(),
                item,
                conditions,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner().attributes)
    }

    async fn try_get(&self, table: &str, key: Item) -> Result<Item, Status> {
        self.c()
            .get_item(self.req(pb::GetItemRequest {
                table_name: table.into(),
                key,
            }))
            .await
            .map(|r| r.into_inner().item)
    }

    async fn get(&self, table: &str, key: Item) -> Item {
        self.try_get(table, key).await.unwrap()
    }

    async fn query(&self, request: pb::QueryRequest) -> Result<pb::QueryResponse, Status> {
        self.c()
            .query(self.req(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn scan(&self, request: pb::ScanRequest) -> Result<pb::ScanResponse, Status> {
        self.c()
            .scan(self.req(request))
            .await
            .map(|r| r.into_inner())
    }

    async fn stop(self) {
        self.tables.stop().await.unwrap();
        if let Some(kms) = self.kms {
            kms.stop().await.unwrap();
        }
    }
}

fn create_request(
    name: &str,
    pk: (&str, pb::ScalarType),
    sk: Option<(&str, pb::ScalarType)>,
) -> pb::CreateTableRequest {
    let element = |(name, t): (&str, pb::ScalarType)| pb::KeyElement {
        name: name.into(),
        r#type: t.into(),
    };
    pb::CreateTableRequest {
        table_name: name.into(),
        key_schema: Some(pb::KeySchema {
            partition_key: Some(element(pk)),
            sort_key: sk.map(element),
        }),
        sse_specification: None,
    }
}

// ------------------------------------------------------------------- values

fn v(value: V) -> Av {
    Av { value: Some(value) }
}

fn s(x: &str) -> Av {
    v(V::S(x.into()))
}

fn n(x: &str) -> Av {
    v(V::N(x.into()))
}

fn b(x: &[u8]) -> Av {
    v(V::B(x.to_vec()))
}

fn ss(xs: &[&str]) -> Av {
    v(V::Ss(pb::StringSet {
        values: xs.iter().map(|x| x.to_string()).collect(),
    }))
}

fn ns(xs: &[&str]) -> Av {
    v(V::Ns(pb::NumberSet {
        values: xs.iter().map(|x| x.to_string()).collect(),
    }))
}

fn bs(xs: &[&[u8]]) -> Av {
    v(V::Bs(pb::BinarySet {
        values: xs.iter().map(|x| x.to_vec()).collect(),
    }))
}

fn m(pairs: &[(&str, Av)]) -> Av {
    v(V::M(pb::MapValue {
        fields: item(pairs),
    }))
}

fn l(values: Vec<Av>) -> Av {
    v(V::L(pb::ListValue { values }))
}

fn item(pairs: &[(&str, Av)]) -> Item {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// `base` with `extra` added (or replaced).
fn with(base: &Item, extra: &[(&str, Av)]) -> Item {
    let mut out = base.clone();
    out.extend(item(extra));
    out
}

/// The text of an S or N value.
fn text(value: Option<&Av>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(V::S(x) | V::N(x)) => x.clone(),
        other => panic!("expected S or N, got {other:?}"),
    }
}

#[track_caller]
fn check_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
    needle: &str,
) {
    let status = result.expect_err("expected an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason).as_deref(),
        Some(reason),
        "{status:?}"
    );
    assert!(
        status.message().contains(needle),
        "{:?} lacks {needle:?}",
        status.message()
    );
}

// --------------------------------------------------------------- data model

#[tokio::test]
async fn every_attribute_type_round_trips_normalised() {
    let stack = start().await;
    let non_key = |sent: bool| {
        let pick = |a: &str, b: &str| if sent { a.to_string() } else { b.to_string() };
        item(&[
            ("s", s("héllo ✓")),
            ("n_trailing", n(&pick("0.10", "0.1"))),
            ("n_38", n("12345678901234567890123456789012345678")),
            (
                "n_38_fraction",
                n(&pick(
                    "-0.12345678901234567890123456789012345678000",
                    "-0.12345678901234567890123456789012345678",
                )),
            ),
            ("n_padded", n(&pick("-000.5000", "-0.5"))),
            ("n_exponent", n(&pick("1.5e3", "1500"))),
            ("n_zero", n(&pick("-0.0", "0"))),
            ("b", b(&[0, 1, 254, 255])),
            ("empty_s", s("")),
            ("bool", v(V::Bool(true))),
            ("null", v(V::Null(true))),
            (
                "m",
                m(&[
                    ("inner", s("x")),
                    ("deeper", m(&[("n", n(&pick("007", "7")))])),
                    ("empty", m(&[])),
                ]),
            ),
            (
                "l",
                l(vec![
                    s("a"),
                    n(&pick("1.500", "1.5")),
                    v(V::Bool(false)),
                    l(vec![]),
                    v(V::Null(true)),
                ]),
            ),
            (
                "ss",
                if sent {
                    ss(&["b", "c", "a"])
                } else {
                    ss(&["a", "b", "c"])
                },
            ),
            (
                "ns",
                if sent {
                    ns(&["10", "2", "1.0", "-3"])
                } else {
                    ns(&["-3", "1", "2", "10"])
                },
            ),
            (
                "bs",
                if sent {
                    bs(&[b"\x02", b"\x01\x00", b"\xff"])
                } else {
                    bs(&[b"\x01\x00", b"\x02", b"\xff"])
                },
            ),
            // Empty strings and binaries are set members like any other.
            ("ss_empty_member", ss(&["", "a"])),
            ("bs_empty_member", bs(&[b"", b"a"])),
        ])
    };
    // (table, key type, key as sent, key as returned)
    let cases = [
        ("types_s", S, s("all"), s("all")),
        ("types_n", N, n("0042.50"), n("42.5")),
        ("types_b", B, b(&[0, 0xff]), b(&[0, 0xff])),
    ];
    for (table, key_type, sent_key, returned_key) in cases {
        stack.create(table, ("id", key_type), None).await;
        stack
            .put(table, with(&non_key(true), &[("id", sent_key.clone())]))
            .await;
        let expected = with(&non_key(false), &[("id", returned_key)]);
        let got = stack.get(table, item(&[("id", sent_key)])).await;
        assert_eq!(got, expected, "{table}");
        // The same item read through Query and Scan.
        let queried = stack
            .query(pb::QueryRequest {
                table_name: table.into(),
                partition_key_value: expected.get("id").cloned(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            queried.items,
            vec![pb::Item {
                attributes: expected.clone()
            }],
            "{table}"
        );
        let scanned = stack
            .scan(pb::ScanRequest {
                table_name: table.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            scanned.items,
            vec![pb::Item {
                attributes: expected
            }],
            "{table}"
        );
    }
    stack.stop().await;
}

// ---------------------------------------------------------------- validation

/// One refused request of the validation table.
enum Call {
    Put(&'static str, Item),
    PutIf(&'static str, Item, Vec<pb::Condition>),
    Get(&'static str, Item),
    Update(pb::UpdateItemRequest),
    Create(pb::CreateTableRequest),
}

async fn run(stack: &Stack, call: Call) -> Result<(), Status> {
    match call {
        Call::Put(table, item) => stack.try_put(table, item, vec![]).await.map(drop),
        Call::PutIf(table, item, conditions) => {
            stack.try_put(table, item, conditions).await.map(drop)
        }
        Call::Get(table, key) => stack.try_get(table, key).await.map(drop),
        Call::Update(r) => stack.c().update_item(stack.req(r)).await.map(drop),
        Call::Create(r) => stack.c().create_table(stack.req(r)).await.map(drop),
    }
}

fn create_with_key(name: &str, kms_key_id: &str) -> Call {
    Call::Create(pb::CreateTableRequest {
        sse_specification: Some(pb::SseSpecification {
            kms_key_id: kms_key_id.into(),
        }),
        ..create_request(name, ("id", S), None)
    })
}

#[tokio::test]
async fn bad_input_is_refused_with_a_helpful_message() {
    let stack = start().await;
    stack.create("vals", ("id", S), Some(("sk", S))).await;
    let key = item(&[("id", s("x")), ("sk", s("y"))]);
    let long = |len: usize| "k".repeat(len);
    // The key plus `extra`; a whole item; a key map; a new table.
    let extra = |extra: &[(&str, Av)]| Call::Put("vals", with(&key, extra));
    let whole = |pk: Av, sk: Av| Call::Put("vals", item(&[("id", pk), ("sk", sk)]));
    let get = |key: Item| Call::Get("vals", key);
    let create = |name: &str, sk: Option<(&str, pb::ScalarType)>| {
        Call::Create(create_request(name, ("id", S), sk))
    };
    let invalid: Vec<(Call, &str)> = vec![
        (
            extra(&[("tags", ss(&[]))]),
            "empty set is not allowed for attribute tags",
        ),
        (
            extra(&[("nums", ns(&[]))]),
            "empty set is not allowed for attribute nums",
        ),
        (
            extra(&[("tags", ss(&["a", "b", "a"]))]),
            "attribute tags: One or more parameter values were invalid: Input collection contains duplicates: \"a\"",
        ),
        (
            extra(&[("nums", ns(&["1", "1.0"]))]),
            "attribute nums: One or more parameter values were invalid: Input collection contains duplicates",
        ),
        (
            extra(&[("bins", bs(&[b"x", b"x"]))]),
            "attribute bins: One or more parameter values were invalid: Input collection contains duplicates",
        ),
        (
            extra(&[("n", n(&"9".repeat(39)))]),
            "attribute n: Number 999999999999999999999999999999999999999 has 39 significant digits: at most 38",
        ),
        (
            extra(&[("n", n("abc"))]),
            "attribute n: Number \"abc\" is not a valid number",
        ),
        // Deep inside a document, the message gives the whole path.
        (
            extra(&[(
                "doc",
                m(&[("lines", l(vec![s("ok"), m(&[("qty", n("x1"))])]))]),
            )]),
            "attribute doc.lines[1].qty: Number \"x1\" is not a valid number",
        ),
        (
            extra(&[("doc", m(&[("tags", ns(&["1", "1"]))]))]),
            "attribute doc.tags: One or more parameter values were invalid: Input collection contains duplicates",
        ),
        (extra(&[("n", n("1e126"))]), "out of range"),
        (extra(&[("z", v(V::Null(false)))]), "null must be true"),
        (
            extra(&[("z", Av { value: None })]),
            "attribute z has no value",
        ),
        (
            Call::Put("vals", item(&[("id", s("x"))])),
            "Missing the key sk in the item",
        ),
        (
            Call::Put("vals", item(&[("sk", s("y"))])),
            "Missing the key id in the item",
        ),
        (
            whole(s("x"), n("1")),
            "Type mismatch for key sk expected: S actual: N",
        ),
        (
            whole(b(b"x"), s("y")),
            "Type mismatch for key id expected: S actual: B",
        ),
        (
            whole(s(""), s("y")),
            "cannot contain an empty string value. Key: id",
        ),
        (
            whole(s("x"), s("")),
            "cannot contain an empty string value. Key: sk",
        ),
        (
            whole(s(&long(2049)), s("y")),
            "Size of partition key id is 2049 bytes, which exceeds the maximum size limit of 2048",
        ),
        (
            whole(s("x"), s(&long(1025))),
            "Size of sort key sk is 1025 bytes, which exceeds the maximum size limit of 1024",
        ),
        // Bytes of UTF-8, not characters: 513 "é" are 1026 bytes.
        (
            whole(s("x"), s(&"é".repeat(513))),
            "Size of sort key sk is 1026 bytes, which exceeds the maximum size limit of 1024",
        ),
        (
            whole(s(&"é".repeat(1025)), s("y")),
            "Size of partition key id is 2050 bytes, which exceeds the maximum size limit of 2048",
        ),
        // Sizes count names and values: 3 + 3 of key, 3 + 409_592 of "big".
        (
            extra(&[("big", s(&long(409_592)))]),
            "the item is 409601 bytes, the limit is 409600",
        ),
        (
            get(with(&key, &[("extra", s("z"))])),
            "give exactly the key attributes [id, sk]",
        ),
        (
            get(item(&[("id", s("x"))])),
            "The provided key element does not match the schema",
        ),
        (
            get(item(&[("id", s("x")), ("sk", b(b"y"))])),
            "Type mismatch for key sk",
        ),
        // A name no table could have is a bad request, not a missing table.
        (
            Call::Get("ab", key.clone()),
            "table name \"ab\" must have 3–255 characters",
        ),
        (
            Call::Put("bad name!", key.clone()),
            "table name \"bad name!\" must have 3–255 characters",
        ),
        // Every value in a request follows the rules of an item's values:
        // no empty set as a condition's or an update's operand either.
        (
            Call::PutIf(
                "vals",
                key.clone(),
                vec![compare("tags", Op::Eq, ns(&[]), None)],
            ),
            "empty set is not allowed for attribute tags",
        ),
        (
            Call::Update(pb::UpdateItemRequest {
                table_name: "vals".into(),
                key: key.clone(),
                actions: vec![delete_members("tags", ss(&[]))],
                ..Default::default()
            }),
            "empty set is not allowed for attribute tags",
        ),
        (
            Call::Update(pb::UpdateItemRequest {
                table_name: "vals".into(),
                key: key.clone(),
                actions: vec![add("doc", m(&[("inner", bs(&[]))]))],
                ..Default::default()
            }),
            "empty set is not allowed for attribute doc.inner",
        ),
        (
            create("ab", None),
            "table name \"ab\" must have 3–255 characters",
        ),
        (
            create("bad name!", None),
            "table name \"bad name!\" must have 3–255 characters",
        ),
        (create(&long(256), None), "must have 3–255 characters"),
        (
            create("twins", Some(("id", N))),
            "give them different names",
        ),
        (
            Call::Create(create_request(
                "untyped",
                ("id", pb::ScalarType::Unspecified),
                None,
            )),
            "partition_key type must be SCALAR_TYPE_S, SCALAR_TYPE_N or SCALAR_TYPE_B",
        ),
        (
            Call::Create(pb::CreateTableRequest {
                table_name: "noschema".into(),
                ..Default::default()
            }),
            "key_schema is required",
        ),
        // A sort key with a type but no name is not taken for no sort key.
        (
            create("nameless", Some(("", N))),
            "key attribute name \"\" is 0 bytes: key names must be 1 to 255 bytes",
        ),
    ];
    let unknown_key = "0f0e0d0c-0b0a-4908-8706-050403020100";
    let other: Vec<(Call, Code, &str, &str)> = vec![
        (
            Call::Get("nope", key.clone()),
            Code::NotFound,
            "ResourceNotFoundException",
            "Table: nope not found",
        ),
        (
            Call::Put("nope", key.clone()),
            Code::NotFound,
            "ResourceNotFoundException",
            "Table: nope not found",
        ),
        (
            create("vals", Some(("sk", S))),
            Code::AlreadyExists,
            "ResourceInUseException",
            "Table already exists: vals",
        ),
        (
            create_with_key("unknown_key", unknown_key),
            Code::NotFound,
            "NotFoundException",
            unknown_key,
        ),
        (
            create_with_key("unknown_alias", "alias/nope"),
            Code::NotFound,
            "NotFoundException",
            "Alias alias/nope is not found",
        ),
    ];
    let cases = invalid
        .into_iter()
        .map(|(call, needle)| (call, Code::InvalidArgument, "ValidationException", needle))
        .chain(other);
    for (call, code, reason, needle) in cases {
        let result = run(&stack, call).await;
        assert!(result.is_err(), "accepted; expected {needle:?}");
        check_status(result, code, reason, needle);
    }

    // Nothing refused was written: most refused writes were of `key`,
    // which the boundary item below overwrites.
    assert!(
        stack.try_get("vals", key.clone()).await.unwrap().is_empty(),
        "a refused write of {key:?} was stored"
    );
    // The limits themselves are accepted.
    let boundary = [
        item(&[("id", s(&long(2048))), ("sk", s("y"))]),
        item(&[("id", s("x")), ("sk", s(&long(1024)))]),
        item(&[("id", s(&"é".repeat(1024))), ("sk", s("y"))]),
        item(&[("id", s("x")), ("sk", s(&"é".repeat(512)))]),
        with(&key, &[("big", s(&long(409_591)))]),
    ];
    for accepted in &boundary {
        stack
            .try_put("vals", accepted.clone(), vec![])
            .await
            .unwrap();
    }
    // Nothing refused was written, and no refused table was created.
    let all = stack
        .scan(pb::ScanRequest {
            table_name: "vals".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    assert_eq!(all.len(), boundary.len());
    let names = stack
        .c()
        .list_tables(stack.req(pb::ListTablesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .table_names;
    assert_eq!(names, vec!["vals".to_string()]);
    stack.stop().await;
}

/// ListTables pages in name order: `limit` names at a time, each page's
/// `last_evaluated_table_name` starting the next, none after the last; a
/// start name need not exist. A limit over 100 or a start name that is not
/// a table name is refused.
#[tokio::test]
async fn list_tables_pages_in_name_order() {
    let stack = start().await;
    let names = ["t-e", "t-a", "t-d", "t-b", "t-c"];
    for name in names {
        stack.create(name, ("id", S), None).await;
    }
    let list = |limit: u32, start: &str| {
        let mut client = stack.c();
        let request = stack.req(pb::ListTablesRequest {
            limit,
            exclusive_start_table_name: start.into(),
        });
        async move { client.list_tables(request).await.map(|r| r.into_inner()) }
    };
    let mut pages = Vec::new();
    let mut start_name = String::new();
    loop {
        let page = list(2, &start_name).await.unwrap();
        pages.push(page.table_names.clone());
        if page.last_evaluated_table_name.is_empty() {
            break;
        }
        assert_eq!(
            Some(&page.last_evaluated_table_name),
            page.table_names.last()
        );
        start_name = page.last_evaluated_table_name;
    }
    assert_eq!(
        pages,
        vec![vec!["t-a", "t-b"], vec!["t-c", "t-d"], vec!["t-e"]]
    );
    // A start name between tables, or after all of them.
    assert_eq!(
        list(0, "t-bb").await.unwrap().table_names,
        ["t-c", "t-d", "t-e"]
    );
    let after = list(0, "t-z").await.unwrap();
    assert!(after.table_names.is_empty() && after.last_evaluated_table_name.is_empty());
    check_status(
        list(101, "").await,
        Code::InvalidArgument,
        "ValidationException",
        "use 1–100",
    );
    for bad in ["x", "no spaces", &"a".repeat(256)] {
        check_status(
            list(0, bad).await,
            Code::InvalidArgument,
            "ValidationException",
            "exclusive_start_table_name: table name",
        );
    }
    stack.stop().await;
}

/// A name no table could have is a ValidationException for any caller,
/// one with no rights at all included, and in every request that names a
/// table; a well-formed name is that caller's AccessDenied.
#[tokio::test]
async fn a_bad_table_name_is_a_validation_error_for_any_caller() {
    let stack = start().await;
    let token = stack.user("no-rights", &[]).await;
    let key = item(&[("id", s("k"))]);
    for (name, code, reason, needle) in [
        (
            "x",
            Code::InvalidArgument,
            "ValidationException",
            "table name \"x\"",
        ),
        (
            "well-formed",
            Code::PermissionDenied,
            "AccessDeniedException",
            "not authorized",
        ),
    ] {
        let mut c = stack.c();
        let t = || name.to_string();
        let results: Vec<(&str, Result<(), Status>)> = vec![
            (
                "GetItem",
                c.get_item(authed(
                    &token,
                    pb::GetItemRequest {
                        table_name: t(),
                        key: key.clone(),
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "PutItem",
                c.put_item(authed(
                    &token,
                    pb::PutItemRequest {
                        table_name: t(),
                        item: key.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "DeleteItem",
                c.delete_item(authed(
                    &token,
                    pb::DeleteItemRequest {
                        table_name: t(),
                        key: key.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "UpdateItem",
                c.update_item(authed(
                    &token,
                    pb::UpdateItemRequest {
                        table_name: t(),
                        key: key.clone(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "Query",
                c.query(authed(
                    &token,
                    pb::QueryRequest {
                        table_name: t(),
                        partition_key_value: Some(s("k")),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "Scan",
                c.scan(authed(
                    &token,
                    pb::ScanRequest {
                        table_name: t(),
                        ..Default::default()
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "DescribeTable",
                c.describe_table(authed(&token, pb::DescribeTableRequest { table_name: t() }))
                    .await
                    .map(drop),
            ),
            (
                "DeleteTable",
                c.delete_table(authed(&token, pb::DeleteTableRequest { table_name: t() }))
                    .await
                    .map(drop),
            ),
            (
                "UpdateTable",
                c.update_table(authed(
                    &token,
                    pb::UpdateTableRequest {
                        table_name: t(),
                        sse_specification: Some(pb::SseSpecification {
                            kms_key_id: "alias/table-service".into(),
                        }),
                    },
                ))
                .await
                .map(drop),
            ),
            (
                "CreateTable",
                c.create_table(authed(&token, create_request(name, ("id", S), None)))
                    .await
                    .map(drop),
            ),
            (
                "BatchGetItem",
                c.batch_get_item(authed(&token, batch_get(vec![(name, vec![key.clone()])])))
                    .await
                    .map(drop),
            ),
            (
                "BatchWriteItem",
                c.batch_write_item(authed(
                    &token,
                    batch_write(vec![(name, vec![write_put(key.clone())])]),
                ))
                .await
                .map(drop),
            ),
        ];
        for (action, result) in results {
            let status = result.expect_err(action);
            assert_eq!(status.code(), code, "{action} {name}: {status:?}");
            assert_eq!(
                status.get_details_error_info().map(|i| i.reason).as_deref(),
                Some(reason),
                "{action} {name}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{action} {name}: {status:?}"
            );
        }
    }
    stack.stop().await;
}

// ------------------------------------------------------- conditional writes

fn not_exists(name: &str) -> pb::Condition {
    pb::Condition {
        kind: Some(pb::condition::Kind::AttributeNotExists(name.into())),
    }
}

fn exists(name: &str) -> pb::Condition {
    pb::Condition {
        kind: Some(pb::condition::Kind::AttributeExists(name.into())),
    }
}

fn compare(attribute: &str, op: Op, value: Av, value2: Option<Av>) -> pb::Condition {
    pb::Condition {
        kind: Some(pb::condition::Kind::Comparison(pb::Comparison {
            attribute: attribute.into(),
            operator: op.into(),
            value: Some(value),
            value2,
        })),
    }
}

#[tokio::test]
async fn conditional_puts_and_deletes() {
    let stack = start().await;
    stack.create("cond", ("id", S), None).await;
    let key = item(&[("id", s("c"))]);
    let first = with(&key, &[("n", n("10")), ("tag", s("first"))]);

    // attribute_not_exists: create once.
    stack
        .try_put("cond", first.clone(), vec![not_exists("id")])
        .await
        .unwrap();
    check_status(
        stack
            .try_put(
                "cond",
                with(&first, &[("tag", s("second"))]),
                vec![not_exists("id")],
            )
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "attribute_not_exists(id) is not satisfied",
    );
    assert_eq!(stack.get("cond", key.clone()).await, first);

    // Each condition is tried on a put that would not change the item.
    let cases: Vec<(pb::Condition, bool)> = vec![
        (exists("n"), true),
        (exists("missing"), false),
        (not_exists("missing"), true),
        (compare("n", Op::Eq, n("10.0"), None), true),
        (compare("n", Op::Eq, n("1e1"), None), true),
        (compare("n", Op::Eq, s("10"), None), false),
        (compare("n", Op::Ne, n("10"), None), false),
        (compare("n", Op::Ne, n("11"), None), true),
        // As strings "10" < "9"; as numbers it is not.
        (compare("n", Op::Lt, n("9"), None), false),
        (compare("n", Op::Lt, n("10.5"), None), true),
        (compare("n", Op::Lt, n("10"), None), false),
        (compare("n", Op::Le, n("10"), None), true),
        (compare("n", Op::Le, n("9.99"), None), false),
        (compare("n", Op::Gt, n("9"), None), true),
        (compare("n", Op::Gt, n("-100"), None), true),
        (compare("n", Op::Gt, n("10"), None), false),
        (compare("n", Op::Ge, n("10.00"), None), true),
        (compare("n", Op::Ge, n("100"), None), false),
        (compare("n", Op::Between, n("5"), Some(n("10"))), true),
        (compare("n", Op::Between, n("10"), Some(n("10"))), true),
        (
            compare("n", Op::Between, n("10.000001"), Some(n("20"))),
            false,
        ),
        (compare("n", Op::Between, n("-1"), Some(n("9.9"))), false),
        (compare("tag", Op::BeginsWith, s("fir"), None), true),
        (compare("tag", Op::BeginsWith, s("sec"), None), false),
        (compare("missing", Op::Eq, n("1"), None), false),
        (compare("missing", Op::Ne, n("1"), None), true),
    ];
    for (condition, holds) in cases {
        let label = format!("{condition:?}");
        let result = stack.try_put("cond", first.clone(), vec![condition]).await;
        if holds {
            result.unwrap_or_else(|e| panic!("{label}: {e:?}"));
        } else {
            check_status(
                result,
                Code::FailedPrecondition,
                "ConditionalCheckFailedException",
                "is not satisfied",
            );
        }
    }
    // Conditions combine with AND.
    check_status(
        stack
            .try_put(
                "cond",
                first.clone(),
                vec![exists("n"), compare("n", Op::Gt, n("10"), None)],
            )
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "n Gt value is not satisfied",
    );
    assert_eq!(stack.get("cond", key.clone()).await, first);

    let delete = |conditions: Vec<pb::Condition>, rv: pb::ReturnValues| pb::DeleteItemRequest {
        table_name: "cond".into(),
        key: key.clone(),
        conditions,
        return_values: rv.into(),
    };
    check_status(
        stack
            .c()
            .delete_item(stack.req(delete(
                vec![compare("n", Op::Lt, n("10"), None)],
                pb::ReturnValues::AllOld,
            )))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "is not satisfied",
    );
    check_status(
        stack
            .c()
            .delete_item(stack.req(delete(vec![], pb::ReturnValues::AllNew)))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "DeleteItem supports return_values NONE or ALL_OLD",
    );
    // A condition no item could sensibly satisfy is invalid, not failed.
    for (condition, needle) in [
        (
            compare("n", Op::Between, n("10"), Some(n("1"))),
            "lower bound is above the upper bound",
        ),
        (compare("n", Op::Between, n("1"), None), "needs value2"),
        (
            compare("n", Op::Eq, n("10"), Some(n("11"))),
            "Invalid number of argument(s) for the EQ ComparisonOperator",
        ),
        (
            compare("tag", Op::BeginsWith, s("f"), Some(s("g"))),
            "Invalid number of argument(s) for the BEGINS_WITH ComparisonOperator",
        ),
        (
            compare("tag", Op::BeginsWith, n("1"), None),
            "BeginsWith takes an S or B value",
        ),
        (
            compare("tags", Op::Lt, ss(&["a"]), None),
            "Lt takes an S, N or B value",
        ),
    ] {
        check_status(
            stack
                .c()
                .delete_item(stack.req(delete(vec![condition], pb::ReturnValues::None)))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            needle,
        );
    }
    assert_eq!(stack.get("cond", key.clone()).await, first);
    let old = stack
        .c()
        .delete_item(stack.req(delete(
            vec![compare("n", Op::Ge, n("10"), None)],
            pb::ReturnValues::AllOld,
        )))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert_eq!(old, first);
    assert!(stack.get("cond", key.clone()).await.is_empty());
    // Deleting what is not there returns nothing; a condition on it fails.
    let gone = stack
        .c()
        .delete_item(stack.req(delete(vec![], pb::ReturnValues::AllOld)))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert!(gone.is_empty(), "{gone:?}");
    check_status(
        stack
            .c()
            .delete_item(stack.req(delete(vec![exists("id")], pb::ReturnValues::None)))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "attribute_exists(id) is not satisfied",
    );

    // PutItem ALL_OLD returns the replaced item.
    stack.put("cond", first.clone()).await;
    let replaced = stack
        .c()
        .put_item(stack.req(pb::PutItemRequest {
            table_name: "cond".into(),
            item: with(&first, &[("tag", s("second"))]),
            return_values: pb::ReturnValues::AllOld.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert_eq!(replaced, first);
    stack.stop().await;
}

/// Answers that name what the caller sent stay small enough for any client
/// to take: a status message travels twice in the trailers, and a client
/// past its trailer bound (hyper's: 16 KiB) fails the call with a transport
/// error, or the whole connection. Names of any legal length are shortened
/// in messages; names over the legal length, and more actions or conditions
/// than a request may carry, are refused.
#[tokio::test]
async fn answers_naming_long_input_stay_small_and_oversized_names_are_refused() {
    let stack = start().await;
    stack.create("names", ("id", S), None).await;
    let key = item(&[("id", s("k"))]);
    let long = "a".repeat(60_000);
    let stored = with(&key, &[(long.as_str(), s("v"))]);
    stack.put("names", stored.clone()).await;
    let small = |status: &Status| {
        assert!(
            status.message().len() <= 1200,
            "{} bytes: {:.200}",
            status.message().len(),
            status.message()
        );
    };

    // A failed condition on the long name: the caller gets the condition's
    // failure, naming the attribute shortened.
    let failed = stack
        .try_put(
            "names",
            stored.clone(),
            vec![compare(&long, Op::Eq, s("other"), None)],
        )
        .await
        .expect_err("the condition does not hold");
    small(&failed);
    check_status(
        Err::<(), _>(failed),
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "aaaa… (60000 bytes) Eq value is not satisfied",
    );
    let update = |actions: Vec<pb::UpdateAction>, conditions: Vec<pb::Condition>| {
        let mut client = stack.c();
        let request = stack.req(pb::UpdateItemRequest {
            table_name: "names".into(),
            key: key.clone(),
            actions,
            conditions,
            return_values: pb::ReturnValues::UpdatedNew.into(),
        });
        async move { client.update_item(request).await }
    };
    // Acting on it twice, and with a type ADD cannot take: refused naming
    // it shortened.
    for (actions, needle) in [
        (
            vec![set(&long, s("x")), remove(&long)],
            "aaaa… (60000 bytes); act on each attribute at most once",
        ),
        (
            vec![add(&long, s("x"))],
            "aaaa… (60000 bytes): cannot add S; ADD works on numbers and sets",
        ),
    ] {
        let refused = update(actions, vec![]).await.expect_err("refused");
        small(&refused);
        check_status(
            Err::<(), _>(refused),
            Code::InvalidArgument,
            "ValidationException",
            needle,
        );
    }

    // Names over 65535 bytes in a condition or a REMOVE are refused as in an
    // item, before anything is read or written.
    let over = "b".repeat(70_000);
    let too_long = "is 70000 bytes long: names must be 1 to 65535 bytes";
    for conditions in [vec![exists(&over)], vec![not_exists(&over)]] {
        let refused = stack
            .try_put("names", stored.clone(), conditions)
            .await
            .expect_err("refused");
        small(&refused);
        check_status(
            Err::<(), _>(refused),
            Code::InvalidArgument,
            "ValidationException",
            too_long,
        );
    }
    let refused = update(vec![remove(&over)], vec![])
        .await
        .expect_err("refused");
    check_status(
        Err::<(), _>(refused),
        Code::InvalidArgument,
        "ValidationException",
        too_long,
    );

    // At most 1000 actions and 1000 conditions a request.
    let many_actions: Vec<_> = (0..1001).map(|i| set(&format!("x{i}"), n("1"))).collect();
    check_status(
        update(many_actions, vec![]).await,
        Code::InvalidArgument,
        "ValidationException",
        "1001 update actions given: an UpdateItem may carry at most 1000",
    );
    let many_conditions: Vec<_> = (0..1001).map(|i| not_exists(&format!("x{i}"))).collect();
    check_status(
        stack
            .try_put("names", stored.clone(), many_conditions)
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "1001 conditions given: a request may carry at most 1000",
    );
    // 1000 of each are taken: an update of 1000 attributes handing back
    // what it set.
    let actions: Vec<_> = (0..1000).map(|i| set(&format!("x{i}"), n("1"))).collect();
    let conditions: Vec<_> = (0..1000).map(|i| not_exists(&format!("x{i}"))).collect();
    let updated = update(actions, conditions)
        .await
        .expect("1000 actions and conditions")
        .into_inner()
        .attributes;
    assert_eq!(updated.len(), 1000);

    // A key map of thousands of names: the refusal lists a few.
    let mut key_map = key.clone();
    for i in 0..5000 {
        key_map.insert(format!("extra-{i:05}-{}", "c".repeat(50)), s("x"));
    }
    let refused = stack
        .try_get("names", key_map)
        .await
        .expect_err("not the key schema");
    small(&refused);
    check_status(
        Err::<(), _>(refused),
        Code::InvalidArgument,
        "ValidationException",
        "and 4996 more]",
    );

    // Nothing above changed the item but the one update.
    let now = stack.get("names", key.clone()).await;
    assert_eq!(now.get(long.as_str()), Some(&s("v")));
    assert_eq!(now.len(), 1002);
    stack.stop().await;
}

fn set(name: &str, value: Av) -> pb::UpdateAction {
    pb::UpdateAction {
        action: Some(pb::update_action::Action::Set(pb::SetAction {
            attribute: name.into(),
            value: Some(value),
        })),
    }
}

fn remove(name: &str) -> pb::UpdateAction {
    pb::UpdateAction {
        action: Some(pb::update_action::Action::Remove(name.into())),
    }
}

fn add(name: &str, value: Av) -> pb::UpdateAction {
    pb::UpdateAction {
        action: Some(pb::update_action::Action::Add(pb::SetAction {
            attribute: name.into(),
            value: Some(value),
        })),
    }
}

fn delete_members(name: &str, value: Av) -> pb::UpdateAction {
    pb::UpdateAction {
        action: Some(pb::update_action::Action::Delete(pb::SetAction {
            attribute: name.into(),
            value: Some(value),
        })),
    }
}

#[tokio::test]
async fn update_item_actions_return_all_new() {
    let stack = start().await;
    let table_id = stack.create("upd", ("id", S), None).await.table_id;
    let key = item(&[("id", s("u"))]);
    stack
        .put(
            "upd",
            with(
                &key,
                &[
                    ("count", n("5")),
                    ("tags", ss(&["a", "b"])),
                    ("nums", ns(&["1", "2"])),
                    ("bins", bs(&[b"x"])),
                    ("gone", s("x")),
                ],
            ),
        )
        .await;
    let update =
        |actions: Vec<pb::UpdateAction>, conditions: Vec<pb::Condition>| pb::UpdateItemRequest {
            table_name: "upd".into(),
            key: key.clone(),
            actions,
            conditions,
            return_values: pb::ReturnValues::AllNew.into(),
        };
    // (actions, the item afterwards); each attribute at most once a request.
    let steps: Vec<(Vec<pb::UpdateAction>, Item)> = vec![
        (
            vec![
                set("name", s("new")),
                remove("gone"),
                add("count", n("2.50")),
                add("tags", ss(&["c"])),
                add("nums", ns(&["3", "2.0"])),
                add("bins", bs(&[b"y"])),
                add("fresh", n("-1")),
            ],
            with(
                &key,
                &[
                    ("count", n("7.5")),
                    ("tags", ss(&["a", "b", "c"])),
                    ("nums", ns(&["1", "2", "3"])),
                    ("bins", bs(&[b"x", b"y"])),
                    ("name", s("new")),
                    ("fresh", n("-1")),
                ],
            ),
        ),
        (
            vec![
                delete_members("tags", ss(&["a", "zzz"])),
                delete_members("nums", ns(&["1.00"])),
                remove("never"),
                add("count", n("-7.5")),
                set("name", m(&[("first", s("a")), ("list", l(vec![n("1.0")]))])),
            ],
            with(
                &key,
                &[
                    ("count", n("0")),
                    ("tags", ss(&["b", "c"])),
                    ("nums", ns(&["2", "3"])),
                    ("bins", bs(&[b"x", b"y"])),
                    ("name", m(&[("first", s("a")), ("list", l(vec![n("1")]))])),
                    ("fresh", n("-1")),
                ],
            ),
        ),
        (
            // Removing every member removes the attribute.
            vec![delete_members("tags", ss(&["b", "c"]))],
            with(
                &key,
                &[
                    ("count", n("0")),
                    ("nums", ns(&["2", "3"])),
                    ("bins", bs(&[b"x", b"y"])),
                    ("name", m(&[("first", s("a")), ("list", l(vec![n("1")]))])),
                    ("fresh", n("-1")),
                ],
            ),
        ),
    ];
    let mut expected = Item::new();
    for (i, (actions, after)) in steps.into_iter().enumerate() {
        let got = stack
            .c()
            .update_item(stack.req(update(actions, vec![])))
            .await
            .unwrap()
            .into_inner()
            .attributes;
        let mut got_sorted: Vec<_> = got.iter().collect();
        got_sorted.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(got, after, "step {i}: {got_sorted:?}");
        assert_eq!(stack.get("upd", key.clone()).await, after, "step {i}");
        expected = after;
    }

    // Refused updates change nothing.
    check_status(
        stack
            .c()
            .update_item(stack.req(update(
                vec![set("name", s("z"))],
                vec![compare("count", Op::Gt, n("0"), None)],
            )))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "count Gt value is not satisfied",
    );
    assert_eq!(stack.get("upd", key.clone()).await, expected);
    let invalid: Vec<(Vec<pb::UpdateAction>, &str)> = vec![
        (
            vec![set("id", s("other"))],
            "Cannot update attribute id. This attribute is part of the key",
        ),
        (vec![remove("id")], "Cannot update attribute id"),
        (vec![add("name", s("x"))], "ADD works on numbers and sets"),
        (
            vec![add("nums", ss(&["x"]))],
            "ADD works on numbers and sets of the same type",
        ),
        (
            vec![delete_members("count", ns(&["1"]))],
            "DELETE works on sets",
        ),
        (vec![set("n", n("1e200"))], "out of range"),
        (vec![set("s", ss(&[]))], "empty set"),
        (vec![set("", s("x"))], "names an empty attribute"),
        // The first action is valid; the batch is refused as a whole.
        (
            vec![set("other", s("z")), add("name", n("1"))],
            "ADD works on numbers and sets",
        ),
        (
            vec![set("name", s("z")), remove("name")],
            "two update actions name attribute name",
        ),
    ];
    for (actions, needle) in invalid {
        check_status(
            stack
                .c()
                .update_item(stack.req(update(actions, vec![])))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            needle,
        );
        assert_eq!(stack.get("upd", key.clone()).await, expected, "{needle}");
    }

    // An update with no actions leaves an existing item as it is (its
    // stored envelope too: nothing is sealed or written), still checking
    // its conditions and answering its return_values.
    let db = stack.dir.path().join("tables/tables.db");
    let envelope = |pk: &str| -> Vec<u8> {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT envelope FROM items WHERE table_id = ?1 AND pk = ?2 AND sk = x''",
            rusqlite::params![table_id, pk.as_bytes()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let sealed = envelope("u");
    let empty_update = |key: &Item, conditions: Vec<pb::Condition>, rv: pb::ReturnValues| {
        stack.req(pb::UpdateItemRequest {
            table_name: "upd".into(),
            key: key.clone(),
            actions: vec![],
            conditions,
            return_values: rv.into(),
        })
    };
    for (return_values, answer) in [
        (pb::ReturnValues::None, Item::new()),
        (pb::ReturnValues::AllOld, expected.clone()),
        (pb::ReturnValues::AllNew, expected.clone()),
        (pb::ReturnValues::UpdatedOld, Item::new()),
        (pb::ReturnValues::UpdatedNew, Item::new()),
    ] {
        let got = stack
            .c()
            .update_item(empty_update(
                &key,
                vec![compare("count", Op::Eq, n("0"), None)],
                return_values,
            ))
            .await
            .unwrap()
            .into_inner()
            .attributes;
        assert_eq!(got, answer, "{return_values:?}");
    }
    check_status(
        stack
            .c()
            .update_item(empty_update(
                &key,
                vec![compare("count", Op::Gt, n("0"), None)],
                pb::ReturnValues::None,
            ))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "count Gt value is not satisfied",
    );
    assert_eq!(stack.get("upd", key.clone()).await, expected);
    assert_eq!(envelope("u"), sealed, "an empty update rewrote the item");
    // ... and creates an absent one holding just its key, unless a
    // condition fails.
    let bare = item(&[("id", s("bare"))]);
    check_status(
        stack
            .c()
            .update_item(empty_update(
                &bare,
                vec![exists("id")],
                pb::ReturnValues::AllNew,
            ))
            .await,
        Code::FailedPrecondition,
        "ConditionalCheckFailedException",
        "attribute_exists(id) is not satisfied",
    );
    assert!(stack.try_get("upd", bare.clone()).await.unwrap().is_empty());
    let created = stack
        .c()
        .update_item(empty_update(
            &bare,
            vec![not_exists("id")],
            pb::ReturnValues::AllNew,
        ))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert_eq!(created, bare);
    assert_eq!(stack.get("upd", bare.clone()).await, bare);
    let bare_old = item(&[("id", s("bare-old"))]);
    let old = stack
        .c()
        .update_item(empty_update(&bare_old, vec![], pb::ReturnValues::AllOld))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert!(old.is_empty(), "{old:?}");
    assert_eq!(stack.get("upd", bare_old.clone()).await, bare_old);

    // UpdateItem of an absent key creates the item; ALL_OLD of it is empty.
    let new_key = item(&[("id", s("new"))]);
    let old = stack
        .c()
        .update_item(stack.req(pb::UpdateItemRequest {
            table_name: "upd".into(),
            key: new_key.clone(),
            actions: vec![add("hits", n("1"))],
            return_values: pb::ReturnValues::AllOld.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert!(old.is_empty(), "{old:?}");
    assert_eq!(
        stack.get("upd", new_key.clone()).await,
        with(&new_key, &[("hits", n("1"))])
    );
    // ... but an update that only removes attributes or set members does
    // not create it (as in DynamoDB), whatever it asks to return; one that
    // is invalid is still refused.
    let absent = item(&[("id", s("absent"))]);
    for (actions, return_values) in [
        (vec![remove("x")], pb::ReturnValues::AllNew),
        (
            vec![delete_members("tags", ss(&["a"]))],
            pb::ReturnValues::AllOld,
        ),
        (
            vec![remove("x"), delete_members("t", ss(&["a"]))],
            pb::ReturnValues::None,
        ),
    ] {
        let answer = stack
            .c()
            .update_item(stack.req(pb::UpdateItemRequest {
                table_name: "upd".into(),
                key: absent.clone(),
                actions,
                return_values: return_values.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .attributes;
        assert!(answer.is_empty(), "{answer:?}");
        assert!(
            stack
                .try_get("upd", absent.clone())
                .await
                .unwrap()
                .is_empty()
        );
    }
    check_status(
        stack
            .c()
            .update_item(stack.req(pb::UpdateItemRequest {
                table_name: "upd".into(),
                key: absent.clone(),
                actions: vec![remove("id")],
                ..Default::default()
            }))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "Cannot update attribute id",
    );

    // UPDATED_OLD and UPDATED_NEW: only the attributes the actions named,
    // as they were and as they are (a removed one is in neither after).
    let counted = item(&[("id", s("counted"))]);
    stack
        .put(
            "upd",
            with(
                &counted,
                &[("hits", n("1")), ("gone", s("x")), ("kept", s("k"))],
            ),
        )
        .await;
    let updated = |return_values: pb::ReturnValues| {
        stack.req(pb::UpdateItemRequest {
            table_name: "upd".into(),
            key: counted.clone(),
            actions: vec![add("hits", n("1")), remove("gone"), set("fresh", s("f"))],
            return_values: return_values.into(),
            ..Default::default()
        })
    };
    let old = stack
        .c()
        .update_item(updated(pb::ReturnValues::UpdatedOld))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert_eq!(old, item(&[("hits", n("1")), ("gone", s("x"))]));
    let new = stack
        .c()
        .update_item(updated(pb::ReturnValues::UpdatedNew))
        .await
        .unwrap()
        .into_inner()
        .attributes;
    assert_eq!(new, item(&[("hits", n("3")), ("fresh", s("f"))]));
    // PutItem and DeleteItem offer only NONE and ALL_OLD.
    for return_values in [pb::ReturnValues::UpdatedOld, pb::ReturnValues::UpdatedNew] {
        check_status(
            stack
                .c()
                .delete_item(stack.req(pb::DeleteItemRequest {
                    table_name: "upd".into(),
                    key: counted.clone(),
                    return_values: return_values.into(),
                    ..Default::default()
                }))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            "DeleteItem supports return_values NONE or ALL_OLD",
        );
        check_status(
            stack
                .c()
                .put_item(stack.req(pb::PutItemRequest {
                    table_name: "upd".into(),
                    item: counted.clone(),
                    return_values: return_values.into(),
                    ..Default::default()
                }))
                .await,
            Code::InvalidArgument,
            "ValidationException",
            "PutItem supports return_values NONE or ALL_OLD",
        );
    }
    stack.stop().await;
}

// ---------------------------------------------------------------------- query

fn sort_condition(op: Op, value: Av, value2: Option<Av>) -> Option<pb::SortKeyCondition> {
    Some(pb::SortKeyCondition {
        operator: op.into(),
        value: Some(value),
        value2,
    })
}

/// Follows `last_evaluated_key` to the end; returns the pages.
async fn query_pages(stack: &Stack, request: &pb::QueryRequest) -> Vec<Vec<Item>> {
    let mut pages = Vec::new();
    let mut start = Item::new();
    for _ in 0..1000 {
        let page = stack
            .query(pb::QueryRequest {
                exclusive_start_key: start,
                ..request.clone()
            })
            .await
            .unwrap();
        let items: Vec<Item> = page.items.into_iter().map(|i| i.attributes).collect();
        if request.limit > 0 {
            assert!(
                items.len() <= request.limit as usize,
                "{} > limit {}",
                items.len(),
                request.limit
            );
        }
        if !page.last_evaluated_key.is_empty() {
            // The key of the page's last item, nothing else.
            let last = items
                .last()
                .expect("a non-empty page before a last_evaluated_key");
            for (name, value) in &page.last_evaluated_key {
                assert_eq!(last.get(name), Some(value));
            }
        }
        pages.push(items);
        if page.last_evaluated_key.is_empty() {
            return pages;
        }
        start = page.last_evaluated_key;
    }
    panic!("query pagination does not end");
}

async fn scan_pages(stack: &Stack, request: &pb::ScanRequest) -> Vec<Vec<Item>> {
    let mut pages = Vec::new();
    let mut start = Item::new();
    for _ in 0..1000 {
        let page = stack
            .scan(pb::ScanRequest {
                exclusive_start_key: start,
                ..request.clone()
            })
            .await
            .unwrap();
        let items: Vec<Item> = page.items.into_iter().map(|i| i.attributes).collect();
        if request.limit > 0 {
            assert!(items.len() <= request.limit as usize);
        }
        pages.push(items);
        if page.last_evaluated_key.is_empty() {
            return pages;
        }
        start = page.last_evaluated_key;
    }
    panic!("scan pagination does not end");
}

/// The values of `attribute` over all pages, in order.
fn column(pages: &[Vec<Item>], attribute: &str) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|i| text(i.get(attribute)))
        .collect()
}

#[tokio::test]
async fn query_orders_filters_and_pages() {
    let stack = start().await;
    stack.create("q_num", ("p", S), Some(("k", N))).await;
    stack.create("q_str", ("p", S), Some(("k", S))).await;
    stack.create("q_bin", ("p", S), Some(("k", B))).await;
    for k in ["10", "2", "-3", "1", "20", "0.50"] {
        stack
            .put("q_num", item(&[("p", s("a")), ("k", n(k)), ("sent", s(k))]))
            .await;
    }
    // Neighbouring partitions must not leak in.
    for (p, k) in [("b", "1"), ("aa", "5"), ("A", "3")] {
        stack.put("q_num", item(&[("p", s(p)), ("k", n(k))])).await;
    }
    for k in ["banana", "ap", "apricot", "b", "a", "apple", "aq", "Zebra"] {
        stack
            .put("q_str", item(&[("p", s("a")), ("k", s(k))]))
            .await;
    }
    for k in [&[0xfe][..], &[0xff], &[0xff, 0x00], &[0xff, 0xff], &[0x01]] {
        stack
            .put("q_bin", item(&[("p", s("a")), ("k", b(k))]))
            .await;
    }

    let all = ["-3", "0.5", "1", "2", "10", "20"];
    // (table, condition, descending, sort keys expected in order)
    let cases: Vec<(&str, Option<pb::SortKeyCondition>, bool, Vec<&str>)> = vec![
        ("q_num", None, false, all.to_vec()),
        ("q_num", None, true, all.iter().rev().copied().collect()),
        (
            "q_num",
            sort_condition(Op::Eq, n("2"), None),
            false,
            vec!["2"],
        ),
        (
            "q_num",
            sort_condition(Op::Eq, n("2.000"), None),
            false,
            vec!["2"],
        ),
        ("q_num", sort_condition(Op::Eq, n("3"), None), false, vec![]),
        (
            "q_num",
            sort_condition(Op::Lt, n("2"), None),
            false,
            vec!["-3", "0.5", "1"],
        ),
        (
            "q_num",
            sort_condition(Op::Lt, n("-3"), None),
            false,
            vec![],
        ),
        (
            "q_num",
            sort_condition(Op::Le, n("2"), None),
            false,
            vec!["-3", "0.5", "1", "2"],
        ),
        (
            "q_num",
            sort_condition(Op::Gt, n("2"), None),
            false,
            vec!["10", "20"],
        ),
        (
            "q_num",
            sort_condition(Op::Gt, n("-4"), None),
            true,
            all.iter().rev().copied().collect(),
        ),
        (
            "q_num",
            sort_condition(Op::Ge, n("2"), None),
            false,
            vec!["2", "10", "20"],
        ),
        (
            "q_num",
            sort_condition(Op::Ge, n("2"), None),
            true,
            vec!["20", "10", "2"],
        ),
        (
            "q_num",
            sort_condition(Op::Between, n("0.5"), Some(n("10"))),
            false,
            vec!["0.5", "1", "2", "10"],
        ),
        (
            "q_num",
            sort_condition(Op::Between, n("0.5"), Some(n("10"))),
            true,
            vec!["10", "2", "1", "0.5"],
        ),
        (
            "q_num",
            sort_condition(Op::Between, n("-2"), Some(n("-2"))),
            false,
            vec![],
        ),
        (
            "q_str",
            None,
            false,
            vec!["Zebra", "a", "ap", "apple", "apricot", "aq", "b", "banana"],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("ap"), None),
            false,
            vec!["ap", "apple", "apricot"],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("ap"), None),
            true,
            vec!["apricot", "apple", "ap"],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("b"), None),
            false,
            vec!["b", "banana"],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("c"), None),
            false,
            vec![],
        ),
        (
            "q_str",
            sort_condition(Op::Lt, s("apple"), None),
            false,
            vec!["Zebra", "a", "ap"],
        ),
        (
            "q_str",
            sort_condition(Op::Between, s("ap"), Some(s("b"))),
            false,
            vec!["ap", "apple", "apricot", "aq", "b"],
        ),
        (
            "q_str",
            sort_condition(Op::Gt, s("aq"), None),
            false,
            vec!["b", "banana"],
        ),
    ];
    for (table, condition, descending, expected) in cases {
        let sort_keys = |pages: &[Vec<Item>]| -> Vec<String> {
            pages.iter().flatten().map(|i| text(i.get("k"))).collect()
        };
        for limit in [0, 1, 2, 4] {
            let request = pb::QueryRequest {
                table_name: table.into(),
                partition_key_value: Some(s("a")),
                sort_key_condition: condition.clone(),
                descending,
                limit,
                ..Default::default()
            };
            let pages = query_pages(&stack, &request).await;
            assert_eq!(
                sort_keys(&pages),
                expected,
                "{table} {condition:?} desc={descending} limit={limit}"
            );
            if limit == 0 {
                assert_eq!(pages.len(), 1, "one page without a limit");
            }
        }
    }
    // Every item of "q_num" comes back whole.
    let pages = query_pages(
        &stack,
        &pb::QueryRequest {
            table_name: "q_num".into(),
            partition_key_value: Some(s("a")),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        column(&pages, "sent"),
        vec!["-3", "0.50", "1", "2", "10", "20"]
    );

    // B sort keys: BEGINS_WITH 0xff has no upper byte string to stop at.
    let binary = |op: Op, value: &[u8]| pb::QueryRequest {
        table_name: "q_bin".into(),
        partition_key_value: Some(s("a")),
        sort_key_condition: sort_condition(op, b(value), None),
        ..Default::default()
    };
    let keys = |pages: Vec<Vec<Item>>| -> Vec<Vec<u8>> {
        pages
            .into_iter()
            .flatten()
            .map(|i| match i.get("k").and_then(|v| v.value.clone()) {
                Some(V::B(k)) => k,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    assert_eq!(
        keys(query_pages(&stack, &binary(Op::BeginsWith, &[0xff])).await),
        vec![vec![0xff], vec![0xff, 0x00], vec![0xff, 0xff]]
    );
    assert_eq!(
        keys(query_pages(&stack, &binary(Op::Lt, &[0xff])).await),
        vec![vec![0x01], vec![0xfe]]
    );

    // Refused queries.
    let base = pb::QueryRequest {
        table_name: "q_num".into(),
        partition_key_value: Some(s("a")),
        ..Default::default()
    };
    let refused: Vec<(pb::QueryRequest, Code, &str, &str)> = vec![
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::BeginsWith, n("1"), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "BEGINS_WITH works on S and B sort keys",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Between, n("10"), Some(n("2"))),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "wrong order",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Between, n("1"), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "BETWEEN needs value2",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Ne, n("1"), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "a sort key condition uses EQ, LT",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Eq, s("1"), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "expected N, got S",
        ),
        (
            pb::QueryRequest {
                partition_key_value: Some(n("1")),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "Type mismatch for key p expected: S actual: N",
        ),
        (
            pb::QueryRequest {
                partition_key_value: None,
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "partition_key_value is required",
        ),
        (
            pb::QueryRequest {
                partition_key_value: Some(s("")),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "empty",
        ),
        (
            pb::QueryRequest {
                partition_key_value: Some(s(&"p".repeat(2049))),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "2048",
        ),
        (
            pb::QueryRequest {
                limit: 1001,
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "limit 1001 is out of range",
        ),
        (
            pb::QueryRequest {
                exclusive_start_key: item(&[("p", s("b")), ("k", n("1"))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "not in the queried partition",
        ),
        // Sort-key condition values are held to the rules of sort key
        // values: not empty, at most 1024 bytes.
        (
            pb::QueryRequest {
                table_name: "q_str".into(),
                sort_key_condition: sort_condition(Op::BeginsWith, s(""), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "cannot contain an empty string value. Key: k",
        ),
        (
            pb::QueryRequest {
                table_name: "q_bin".into(),
                sort_key_condition: sort_condition(Op::Eq, b(b""), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "cannot contain an empty binary value. Key: k",
        ),
        (
            pb::QueryRequest {
                table_name: "q_str".into(),
                sort_key_condition: sort_condition(Op::Lt, s(&"k".repeat(1025)), None),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "Size of sort key k is 1025 bytes, which exceeds the maximum size limit of 1024 bytes",
        ),
        (
            pb::QueryRequest {
                table_name: "q_str".into(),
                sort_key_condition: sort_condition(Op::Between, s("a"), Some(s(&"z".repeat(1025)))),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "Size of sort key k is 1025 bytes",
        ),
        // value2 belongs to BETWEEN only.
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Eq, n("1"), Some(n("2"))),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "Invalid number of argument(s) for the EQ ComparisonOperator",
        ),
        (
            pb::QueryRequest {
                table_name: "q_str".into(),
                sort_key_condition: sort_condition(Op::BeginsWith, s("a"), Some(s("b"))),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "Invalid number of argument(s) for the BEGINS_WITH ComparisonOperator",
        ),
        // A start key outside the sort-key condition would restart the
        // range: refused, in either order, at either end of the range.
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Ge, n("10"), None),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("3"))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "The provided starting key does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Between, n("1"), Some(n("5"))),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("9"))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "The provided starting key does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Between, n("1"), Some(n("5"))),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("0.5"))]),
                descending: true,
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Le, n("2"), None),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("10"))]),
                descending: true,
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Gt, n("2"), None),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("2"))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                sort_key_condition: sort_condition(Op::Eq, n("2"), None),
                exclusive_start_key: item(&[("p", s("a")), ("k", n("1"))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                table_name: "q_str".into(),
                sort_key_condition: sort_condition(Op::BeginsWith, s("ap"), None),
                // "aq" is the first string past every one starting with "ap".
                exclusive_start_key: item(&[("p", s("a")), ("k", s("aq"))]),
                descending: true,
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                table_name: "q_bin".into(),
                sort_key_condition: sort_condition(Op::BeginsWith, b(&[0xff]), None),
                exclusive_start_key: item(&[("p", s("a")), ("k", b(&[0xfe]))]),
                ..base.clone()
            },
            Code::InvalidArgument,
            "ValidationException",
            "does not match the range key predicate",
        ),
        (
            pb::QueryRequest {
                table_name: "nope".into(),
                ..base.clone()
            },
            Code::NotFound,
            "ResourceNotFoundException",
            "Table: nope not found",
        ),
    ];
    for (request, code, reason, needle) in refused {
        check_status(stack.query(request).await, code, reason, needle);
    }

    // A start key inside the condition's range (any key there, not only a
    // last_evaluated_key) goes on after it.
    let accepted = vec![
        (
            "q_num",
            sort_condition(Op::Ge, n("10"), None),
            false,
            n("10"),
            vec!["20"],
        ),
        (
            "q_num",
            sort_condition(Op::Ge, n("2"), None),
            false,
            n("3"),
            vec!["10", "20"],
        ),
        (
            "q_num",
            sort_condition(Op::Between, n("0.5"), Some(n("10"))),
            true,
            n("2"),
            vec!["1", "0.5"],
        ),
        (
            "q_num",
            sort_condition(Op::Between, n("0.5"), Some(n("10"))),
            true,
            n("0.5"),
            vec![],
        ),
        (
            "q_num",
            sort_condition(Op::Eq, n("2"), None),
            false,
            n("2"),
            vec![],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("ap"), None),
            false,
            s("apple"),
            vec!["apricot"],
        ),
        (
            "q_str",
            sort_condition(Op::BeginsWith, s("ap"), None),
            true,
            s("apz"),
            vec!["apricot", "apple", "ap"],
        ),
    ];
    for (table, condition, descending, start, expected) in accepted {
        let page = stack
            .query(pb::QueryRequest {
                table_name: table.into(),
                partition_key_value: Some(s("a")),
                sort_key_condition: condition.clone(),
                descending,
                exclusive_start_key: item(&[("p", s("a")), ("k", start.clone())]),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{table} {condition:?} from {start:?}: {e:?}"));
        let sort_keys: Vec<String> = page
            .items
            .iter()
            .map(|i| text(i.attributes.get("k")))
            .collect();
        assert_eq!(sort_keys, expected, "{table} {condition:?} from {start:?}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn query_pages_stop_at_one_mib() {
    let stack = start().await;
    stack.create("big", ("p", S), Some(("i", N))).await;
    let blob = vec![7u8; 100 * 1024];
    for i in 0..12 {
        stack
            .put(
                "big",
                item(&[
                    ("p", s("one")),
                    ("i", n(&i.to_string())),
                    ("blob", b(&blob)),
                ]),
            )
            .await;
    }
    let request = pb::QueryRequest {
        table_name: "big".into(),
        partition_key_value: Some(s("one")),
        ..Default::default()
    };
    let first = stack.query(request.clone()).await.unwrap();
    assert!(
        !first.items.is_empty() && first.items.len() < 12,
        "first page has {} items",
        first.items.len()
    );
    let bytes: usize = first
        .items
        .iter()
        .map(
            |i| match i.attributes.get("blob").and_then(|v| v.value.as_ref()) {
                Some(V::B(x)) => x.len(),
                _ => 0,
            },
        )
        .sum();
    assert!(bytes <= 1024 * 1024, "{bytes} bytes in one page");
    assert!(!first.last_evaluated_key.is_empty());
    let pages = query_pages(&stack, &request).await;
    assert!(pages.len() >= 2);
    let expected: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    assert_eq!(column(&pages, "i"), expected);
    assert!(
        pages
            .iter()
            .flatten()
            .all(|i| i.get("blob") == Some(&b(&blob)))
    );
    // The same cap applies to Scan.
    let scanned = scan_pages(
        &stack,
        &pb::ScanRequest {
            table_name: "big".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(scanned[0].len() < 12);
    assert_eq!(column(&scanned, "i"), expected);
    stack.stop().await;
}

/// Items of many small attributes take several times their DynamoDB size
/// in a response. With `--max-message-bytes` at its lowest (1 MiB), a page
/// well under the 1 MiB item-size cap would still not fit one message:
/// Query and Scan pages stop where the next item would not fit, and
/// following them gets every item.
#[tokio::test]
async fn pages_stop_before_the_response_is_too_large_to_send() {
    let stack = start_with(|c| c.max_message_bytes = 1024 * 1024).await;
    stack.create("wide", ("p", S), Some(("i", N))).await;
    // 6000 attributes of two-character names and BOOL values: about 18 KB
    // of item size, about 60 KB as a response item.
    let attributes: Vec<(String, Av)> = (0..6000)
        .map(|a| {
            (
                format!("{:02}", a % 100) + &(a / 100).to_string(),
                v(V::Bool(a % 2 == 0)),
            )
        })
        .collect();
    let wide = |i: usize| -> Item {
        let mut item: Item = attributes.iter().cloned().collect();
        item.insert("p".into(), s("one"));
        item.insert("i".into(), n(&i.to_string()));
        item
    };
    const ITEMS: usize = 30;
    for i in 0..ITEMS {
        stack.put("wide", wide(i)).await;
    }
    let expected: Vec<String> = (0..ITEMS).map(|i| i.to_string()).collect();
    let pages = query_pages(
        &stack,
        &pb::QueryRequest {
            table_name: "wide".into(),
            partition_key_value: Some(s("one")),
            ..Default::default()
        },
    )
    .await;
    assert!(pages.len() >= 2, "{} page(s)", pages.len());
    assert_eq!(column(&pages, "i"), expected);
    assert!(
        pages
            .iter()
            .flatten()
            .enumerate()
            .all(|(i, item)| item == &wide(i))
    );
    let scanned = scan_pages(
        &stack,
        &pb::ScanRequest {
            table_name: "wide".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(scanned.len() >= 2, "{} page(s)", scanned.len());
    assert_eq!(column(&scanned, "i"), expected);
    stack.stop().await;
}

/// One item can take more than `--max-message-bytes` in a response (an
/// item just under 400 KiB of many small attributes takes more than 1 MiB
/// on the wire; built by updates that each fit): GetItem, Query, Scan and BatchGetItem
/// refuse it naming the setting, instead of failing in the transport or
/// handing it back unprocessed forever; other items still read. A write
/// asking for it back is refused before it is made.
#[tokio::test]
async fn an_item_larger_than_any_response_is_refused_naming_the_setting() {
    let stack = start_with(|c| c.max_message_bytes = 1024 * 1024).await;
    stack.create("huge", ("id", S), None).await;
    let key = item(&[("id", s("big"))]);
    stack.put("huge", key.clone()).await;
    // 100,000 NULL attributes of three-character names: 400,000 bytes of
    // item, about 1,100,000 on the wire; set 1,000 at a time (the most
    // actions an UpdateItem may carry).
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let name = |i: usize| -> String {
        [i / 3844, i / 62 % 62, i % 62]
            .iter()
            .map(|&d| ALPHABET[d] as char)
            .collect()
    };
    for part in 0..100 {
        stack
            .c()
            .update_item(
                stack.req(pb::UpdateItemRequest {
                    table_name: "huge".into(),
                    key: key.clone(),
                    actions: (part * 1_000..(part + 1) * 1_000)
                        .map(|i| set(&name(i), v(V::Null(true))))
                        .collect(),
                    ..Default::default()
                }),
            )
            .await
            .unwrap();
    }
    stack.put("huge", item(&[("id", s("small"))])).await;
    let setting = "(--max-message-bytes / TABLE_MAX_MESSAGE_BYTES): raise that setting";
    let too_large = |result: Result<(), Status>| {
        check_status(
            result,
            Code::ResourceExhausted,
            "ValidationException",
            setting,
        )
    };
    too_large(stack.try_get("huge", key.clone()).await.map(drop));
    too_large(
        stack
            .query(pb::QueryRequest {
                table_name: "huge".into(),
                partition_key_value: Some(s("big")),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    too_large(
        stack
            .scan(pb::ScanRequest {
                table_name: "huge".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    too_large(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("huge", vec![key.clone()])])))
            .await
            .map(drop),
    );
    assert_eq!(
        stack.get("huge", item(&[("id", s("small"))])).await,
        item(&[("id", s("small"))])
    );
    // A write that asks for such an item back is refused before it is
    // made, never made and then reported as failed: the item is not
    // deleted, overwritten or updated (a client retrying would otherwise
    // add twice, or lose the item it asked for).
    let unwritten = |result: Result<(), Status>| {
        check_status(
            result,
            Code::ResourceExhausted,
            "ValidationException",
            "so nothing was written: ask for return_values NONE",
        )
    };
    unwritten(
        stack
            .c()
            .delete_item(stack.req(pb::DeleteItemRequest {
                table_name: "huge".into(),
                key: key.clone(),
                return_values: pb::ReturnValues::AllOld.into(),
                ..Default::default()
            }))
            .await
            .map(drop),
    );
    unwritten(
        stack
            .c()
            .put_item(stack.req(pb::PutItemRequest {
                table_name: "huge".into(),
                item: item(&[("id", s("big")), ("small", s("now"))]),
                return_values: pb::ReturnValues::AllOld.into(),
                ..Default::default()
            }))
            .await
            .map(drop),
    );
    for _ in 0..2 {
        unwritten(
            stack
                .c()
                .update_item(stack.req(pb::UpdateItemRequest {
                    table_name: "huge".into(),
                    key: key.clone(),
                    actions: vec![add("n", n("1"))],
                    return_values: pb::ReturnValues::AllNew.into(),
                    ..Default::default()
                }))
                .await
                .map(drop),
        );
    }
    // Still there, still whole (too large to read), and never given `n`.
    too_large(stack.try_get("huge", key.clone()).await.map(drop));
    stack
        .c()
        .update_item(stack.req(pb::UpdateItemRequest {
            table_name: "huge".into(),
            key: key.clone(),
            actions: vec![set("n", n("0"))],
            conditions: vec![not_exists("n"), exists("zzz")],
            ..Default::default()
        }))
        .await
        .expect("the refused writes changed nothing");
    stack.stop().await;
}

/// Query, Scan and BatchGetItem unwrap a page's data keys a bounded number
/// at a time; with the bound far below the page size (down to one at a
/// time) every item still comes back, opened, in order.
#[tokio::test]
async fn pages_larger_than_the_unwrap_bound_come_back_whole_and_in_order() {
    for width in [1, 3] {
        let stack = start_with(|c| {
            c.data_key_cache_ttl_secs = 0;
            c.kms_unwrap_concurrency = width;
        })
        .await;
        stack.create("bounded", ("p", S), Some(("i", N))).await;
        let count = 11;
        let expected: Vec<String> = (0..count).map(|i| format!("value {i}")).collect();
        for i in 0..count {
            stack
                .put(
                    "bounded",
                    item(&[
                        ("p", s("a")),
                        ("i", n(&i.to_string())),
                        ("v", s(&format!("value {i}"))),
                    ]),
                )
                .await;
        }
        let query = pb::QueryRequest {
            table_name: "bounded".into(),
            partition_key_value: Some(s("a")),
            ..Default::default()
        };
        let forward = query_pages(&stack, &query).await;
        assert_eq!(forward.len(), 1, "width {width}: one page");
        assert_eq!(column(&forward, "v"), expected, "width {width}");
        let backward = query_pages(
            &stack,
            &pb::QueryRequest {
                descending: true,
                ..query
            },
        )
        .await;
        let mut reversed = expected.clone();
        reversed.reverse();
        assert_eq!(column(&backward, "v"), reversed, "width {width}");
        let scanned = scan_pages(
            &stack,
            &pb::ScanRequest {
                table_name: "bounded".into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(column(&scanned, "v"), expected, "width {width}");
        let keys = (0..count)
            .map(|i| item(&[("p", s("a")), ("i", n(&i.to_string()))]))
            .collect();
        let got = stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("bounded", keys)])))
            .await
            .unwrap()
            .into_inner();
        let mut values: Vec<String> = got.responses["bounded"]
            .items
            .iter()
            .map(|i| text(i.attributes.get("v")))
            .collect();
        values.sort_by_key(|v| v[6..].parse::<u32>().unwrap());
        assert_eq!(values, expected, "width {width}");
        stack.stop().await;
    }
}

// ----------------------------------------------------------------------- scan

#[tokio::test]
async fn scan_pages_and_parallel_segments() {
    let stack = start().await;
    stack.create("scan", ("p", S), Some(("i", N))).await;
    let count = 40;
    for i in 0..count {
        stack
            .put(
                "scan",
                item(&[
                    ("p", s(&format!("part{}", i % 13))),
                    ("i", n(&i.to_string())),
                ]),
            )
            .await;
    }
    let id = |i: &Item| format!("{}/{}", text(i.get("p")), text(i.get("i")));
    let base = pb::ScanRequest {
        table_name: "scan".into(),
        ..Default::default()
    };
    let full: Vec<String> = scan_pages(&stack, &base)
        .await
        .iter()
        .flatten()
        .map(id)
        .collect();
    assert_eq!(full.len(), count);
    assert_eq!(
        full.iter().collect::<BTreeSet<_>>().len(),
        count,
        "{full:?}"
    );
    for limit in [1, 3, 7, 40, 1000] {
        let paged: Vec<String> = scan_pages(
            &stack,
            &pb::ScanRequest {
                limit,
                ..base.clone()
            },
        )
        .await
        .iter()
        .flatten()
        .map(id)
        .collect();
        assert_eq!(paged, full, "limit {limit}");
    }

    for total in [1u32, 2, 3] {
        let mut union = Vec::new();
        for segment in 0..total {
            let items: Vec<Item> = scan_pages(
                &stack,
                &pb::ScanRequest {
                    segment,
                    total_segments: total,
                    limit: 4,
                    ..base.clone()
                },
            )
            .await
            .into_iter()
            .flatten()
            .collect();
            assert!(!items.is_empty(), "segment {segment} of {total} is empty");
            union.extend(items.iter().map(id));
        }
        assert_eq!(
            union.len(),
            count,
            "segments of {total} overlap or miss: {union:?}"
        );
        assert_eq!(
            union.iter().cloned().collect::<BTreeSet<_>>(),
            full.iter().cloned().collect::<BTreeSet<_>>()
        );
    }

    // A start key of one segment does not fit another: its partition is
    // not there, and the items of that segment below it would be skipped.
    let first_of_segment_0 = stack
        .scan(pb::ScanRequest {
            segment: 0,
            total_segments: 2,
            limit: 1,
            ..base.clone()
        })
        .await
        .unwrap();
    assert!(!first_of_segment_0.last_evaluated_key.is_empty());
    let stray = pb::ScanRequest {
        segment: 1,
        total_segments: 2,
        exclusive_start_key: first_of_segment_0.last_evaluated_key.clone(),
        ..base.clone()
    };
    check_status(
        stack.scan(stray.clone()).await,
        Code::InvalidArgument,
        "ValidationException",
        "The provided starting key is invalid: Invalid ExclusiveStartKey. Please use ExclusiveStartKey with correct Segment",
    );
    // It still goes on in its own segment, and in a scan without segments.
    for (segment, total_segments) in [(0, 2), (0, 0)] {
        stack
            .scan(pb::ScanRequest {
                segment,
                total_segments,
                ..stray.clone()
            })
            .await
            .unwrap_or_else(|e| panic!("segment {segment} of {total_segments}: {e:?}"));
    }

    let invalid = [(3, 3), (1, 0), (5, 3), (0, 1_000_001)];
    for (segment, total_segments) in invalid {
        check_status(
            stack
                .scan(pb::ScanRequest {
                    segment,
                    total_segments,
                    ..base.clone()
                })
                .await,
            Code::InvalidArgument,
            "ValidationException",
            &format!("segment {segment} of total_segments {total_segments} is invalid"),
        );
    }
    check_status(
        stack
            .scan(pb::ScanRequest {
                limit: 1001,
                ..base.clone()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "limit 1001 is out of range",
    );
    check_status(
        stack
            .scan(pb::ScanRequest {
                exclusive_start_key: item(&[("p", s("x"))]),
                ..base.clone()
            })
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "does not match the schema",
    );
    stack.stop().await;
}

// -------------------------------------------------------------------- batches

fn write_put(item: Item) -> pb::WriteRequest {
    pb::WriteRequest {
        request: Some(pb::write_request::Request::PutRequest(pb::Item {
            attributes: item,
        })),
    }
}

fn write_delete(key: Item) -> pb::WriteRequest {
    pb::WriteRequest {
        request: Some(pb::write_request::Request::DeleteRequest(pb::Item {
            attributes: key,
        })),
    }
}

fn batch_write(tables: Vec<(&str, Vec<pb::WriteRequest>)>) -> pb::BatchWriteItemRequest {
    pb::BatchWriteItemRequest {
        request_items: tables
            .into_iter()
            .map(|(t, requests)| (t.to_string(), pb::WriteRequests { requests }))
            .collect(),
    }
}

/// BatchWriteItem writes an item one at a time with every other writer of
/// it: an UpdateItem that read the item before a batch put committed cannot
/// commit over it afterwards (a lost acknowledged write), so the end value
/// is either the put's, or the put's with the update applied after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_write_and_an_update_of_one_item_never_lose_either() {
    let stack = start_with(|c| c.data_key_cache_ttl_secs = 0).await;
    stack.create("race", ("id", S), None).await;
    let key = item(&[("id", s("x"))]);
    for round in 0..25 {
        stack.put("race", with(&key, &[("n", n("5"))])).await;
        let (mut updater, mut batcher) = (stack.c(), stack.c());
        let update = updater.update_item(stack.req(pb::UpdateItemRequest {
            table_name: "race".into(),
            key: key.clone(),
            actions: vec![add("n", n("1"))],
            ..Default::default()
        }));
        let batch = batcher.batch_write_item(stack.req(batch_write(vec![(
            "race",
            vec![write_put(with(&key, &[("n", n("1000"))]))],
        )])));
        let (updated, batched) = tokio::join!(update, batch);
        updated.unwrap();
        assert!(batched.unwrap().into_inner().unprocessed_items.is_empty());
        let end = text(stack.get("race", key.clone()).await.get("n"));
        assert!(
            end == "1000" || end == "1001",
            "round {round}: n = {end}, an acknowledged write was lost"
        );
    }
    stack.stop().await;
}

/// A BatchGetItem whose items would not fit in one response message
/// answers those that fit and returns the rest as unprocessed keys, rather
/// than failing as too large to send; following the unprocessed keys gets
/// every item.
#[tokio::test]
async fn a_batch_get_larger_than_a_message_is_answered_in_parts() {
    let stack = start_with(|c| c.max_message_bytes = 1024 * 1024).await;
    stack.create("big", ("id", S), None).await;
    let blob = "x".repeat(300 * 1024);
    let keys: Vec<Item> = (0..6)
        .map(|i| item(&[("id", s(&format!("k{i}")))]))
        .collect();
    for k in &keys {
        stack.put("big", with(k, &[("blob", s(&blob))])).await;
    }
    let mut pending = keys.clone();
    let mut got = Vec::new();
    let mut calls = 0;
    while !pending.is_empty() {
        calls += 1;
        assert!(calls <= 10, "BatchGetItem makes no progress");
        let answer = stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("big", pending.clone())])))
            .await
            .unwrap()
            .into_inner();
        let items = answer
            .responses
            .get("big")
            .map(|l| l.items.clone())
            .unwrap_or_default();
        assert!(!items.is_empty(), "call {calls} answered nothing");
        got.extend(items.into_iter().map(|i| i.attributes));
        pending = answer
            .unprocessed_keys
            .get("big")
            .map(|k| k.keys.iter().map(|i| i.attributes.clone()).collect())
            .unwrap_or_default();
    }
    assert!(calls > 1, "six items of 300 KiB do not fit in 1 MiB");
    got.sort_by_key(|i| text(i.get("id")));
    assert_eq!(got.len(), keys.len());
    for (item, k) in got.iter().zip(&keys) {
        assert_eq!(item, &with(k, &[("blob", s(&blob))]));
    }
    // A request over the message-size limit, which tonic refuses before
    // any handler runs, is answered like any other bad input, and the
    // connection goes on serving.
    check_status(
        stack
            .try_put(
                "big",
                item(&[("id", s("huge")), ("blob", s(&"x".repeat(1100 * 1024)))]),
                vec![],
            )
            .await,
        Code::ResourceExhausted,
        "ValidationException",
        "the limit is: 1048576 bytes); table-service takes messages up to --max-message-bytes (TABLE_MAX_MESSAGE_BYTES)",
    );
    // So are bytes that are no valid request message (a GetItemRequest's
    // table_name, field 1, not UTF-8).
    let channel = Channel::from_shared(format!("http://{}", stack.tables.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    check_status(
        raw::call(
            channel,
            "/table.v1.TableService/GetItem",
            stack.req(vec![0x0a, 0x01, 0xff]),
        )
        .await,
        Code::InvalidArgument,
        "ValidationException",
        "the request message is not a valid GetItemRequest (failed to decode Protobuf message: GetItemRequest.table_name",
    );
    assert!(
        stack
            .try_get("big", item(&[("id", s("huge"))]))
            .await
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );
    stack.stop().await;
}

/// BatchGetItem checks every table and key before it reads any item: a
/// missing table, a key of the wrong type or a duplicate key in a later
/// table refuses the request before a data key of an earlier table's item
/// is unwrapped (no Decrypt reaches kms-service).
#[tokio::test]
async fn a_batch_get_is_checked_whole_before_anything_is_unwrapped() {
    let stack = start().await;
    stack.create("a-items", ("id", S), None).await;
    stack.create("b-items", ("id", S), None).await;
    let one = item(&[("id", s("1"))]);
    stack.put("a-items", one.clone()).await;
    let log = stack.dir.path().join("kms/audit/audit.jsonl");
    let decrypts = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|line| line.contains(r#""event_name":"Decrypt""#))
            .count()
    };
    let before = decrypts();
    let get = |tables: Vec<(&str, Vec<Item>)>| {
        let mut client = stack.c();
        let request = stack.req(batch_get(tables));
        async move { client.batch_get_item(request).await }
    };
    let refused = [
        (
            vec![
                ("a-items", vec![one.clone()]),
                ("c-missing", vec![one.clone()]),
            ],
            Code::NotFound,
            "ResourceNotFoundException",
            "c-missing",
        ),
        (
            vec![
                ("a-items", vec![one.clone()]),
                ("b-items", vec![item(&[("id", n("1"))])]),
            ],
            Code::InvalidArgument,
            "ValidationException",
            "id",
        ),
        (
            vec![
                ("a-items", vec![one.clone()]),
                ("b-items", vec![one.clone(), one.clone()]),
            ],
            Code::InvalidArgument,
            "ValidationException",
            "duplicates",
        ),
    ];
    for (tables, code, reason, needle) in refused {
        check_status(get(tables).await, code, reason, needle);
        assert_eq!(decrypts(), before, "no data key was unwrapped");
    }
    // The same request with a valid second table reads a-items's item,
    // both tables decided in one Authorize.
    let records = || {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .collect::<Vec<_>>()
    };
    let seen = records().len();
    let answered = get(vec![
        ("a-items", vec![one.clone()]),
        ("b-items", vec![one.clone()]),
    ])
    .await
    .unwrap()
    .into_inner();
    assert_eq!(answered.responses["a-items"].items.len(), 1);
    assert_eq!(decrypts(), before + 1);
    let authorized: Vec<Vec<(String, String)>> = records()[seen..]
        .iter()
        .filter(|r| r["event_name"] == "Authorize")
        .map(|r| {
            r["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    (
                        c["action"].as_str().unwrap().to_string(),
                        c["resource"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect();
    let pair = |table: &str| ("table:BatchGetItem".to_string(), format!("table/{table}"));
    assert_eq!(authorized, [vec![pair("a-items"), pair("b-items")]]);
    stack.stop().await;
}

fn batch_get(tables: Vec<(&str, Vec<Item>)>) -> pb::BatchGetItemRequest {
    pb::BatchGetItemRequest {
        request_items: tables
            .into_iter()
            .map(|(t, keys)| {
                (
                    t.to_string(),
                    pb::KeysAndAttributes {
                        keys: keys
                            .into_iter()
                            .map(|attributes| pb::Item { attributes })
                            .collect(),
                    },
                )
            })
            .collect(),
    }
}

#[tokio::test]
async fn batch_write_then_batch_get_across_tables() {
    let stack = start().await;
    stack.create("bw1", ("id", S), None).await;
    stack.create("bw2", ("p", S), Some(("n", N))).await;
    let k1 = |id: &str| item(&[("id", s(id))]);
    let k2 = |p: &str, x: &str| item(&[("p", s(p)), ("n", n(x))]);
    stack.put("bw1", with(&k1("old"), &[("v", s("old"))])).await;
    stack
        .put("bw2", with(&k2("old", "1"), &[("v", s("old"))]))
        .await;
    stack
        .put("bw1", with(&k1("x2"), &[("v", s("before"))]))
        .await;

    let puts1 = [
        with(&k1("x1"), &[("v", s("one"))]),
        with(&k1("x2"), &[("v", s("two")), ("ns", ns(&["2", "1"]))]),
    ];
    let puts2 = [
        with(&k2("p", "1"), &[("v", s("p1"))]),
        with(&k2("p", "2.0"), &[("v", s("p2"))]),
    ];
    let unprocessed = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![
                (
                    "bw1",
                    puts1
                        .iter()
                        .cloned()
                        .map(write_put)
                        .chain([write_delete(k1("old"))])
                        .collect(),
                ),
                (
                    "bw2",
                    puts2
                        .iter()
                        .cloned()
                        .map(write_put)
                        .chain([write_delete(k2("old", "1"))])
                        .collect(),
                ),
            ])))
        .await
        .unwrap()
        .into_inner()
        .unprocessed_items;
    assert!(unprocessed.is_empty(), "{unprocessed:?}");

    let got = stack
        .c()
        .batch_get_item(stack.req(batch_get(vec![
            ("bw1", vec![k1("x1"), k1("x2"), k1("old"), k1("never")]),
            ("bw2", vec![k2("p", "1"), k2("p", "2"), k2("old", "1")]),
        ])))
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.unprocessed_keys.is_empty(),
        "{:?}",
        got.unprocessed_keys
    );
    let sorted = |table: &str, by: &str| -> Vec<Item> {
        let mut items: Vec<Item> = got.responses[table]
            .items
            .iter()
            .map(|i| i.attributes.clone())
            .collect();
        items.sort_by_key(|i| text(i.get(by)));
        items
    };
    assert_eq!(
        sorted("bw1", "id"),
        vec![
            with(&k1("x1"), &[("v", s("one"))]),
            with(&k1("x2"), &[("v", s("two")), ("ns", ns(&["1", "2"]))])
        ]
    );
    assert_eq!(
        sorted("bw2", "n"),
        vec![
            with(&k2("p", "1"), &[("v", s("p1"))]),
            with(&k2("p", "2"), &[("v", s("p2"))])
        ]
    );

    // Limits: 25 writes and 100 keys pass, one more is refused and writes nothing.
    let writes = |count: usize, prefix: &str| -> Vec<pb::WriteRequest> {
        (0..count)
            .map(|i| write_put(k1(&format!("{prefix}{i}"))))
            .collect()
    };
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![("bw1", writes(26, "over"))])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "BatchWriteItem takes 1–25 requests; this request has 26",
    );
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![
                    ("bw1", writes(13, "over")),
                    (
                        "bw2",
                        (0..13)
                            .map(|i| write_put(k2("over", &i.to_string())))
                            .collect(),
                    ),
                ])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "this request has 26",
    );
    assert!(stack.get("bw1", k1("over0")).await.is_empty());
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "this request has 0",
    );
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![(
                "bw1",
                vec![write_put(k1("dup")), write_delete(k1("dup"))],
            )])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "Provided list of item keys contains duplicates: item id (S) \"dup\" of table bw1 is written twice",
    );
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![(
                "bw1",
                vec![
                    write_put(k1("fine")),
                    write_put(with(&k1("bad"), &[("x", ss(&[]))])),
                ],
            )])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "empty set",
    );
    for key in ["fine", "dup"] {
        assert!(
            stack.get("bw1", k1(key)).await.is_empty(),
            "a refused batch wrote part of itself ({key})"
        );
    }
    stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![("bw1", writes(25, "ok"))])))
        .await
        .unwrap();
    let keys = |count: usize| -> Vec<Item> { (0..count).map(|i| k1(&format!("ok{i}"))).collect() };
    let hundred = stack
        .c()
        .batch_get_item(stack.req(batch_get(vec![("bw1", keys(100))])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hundred.responses["bw1"].items.len(), 25);
    check_status(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("bw1", keys(101))])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "BatchGetItem takes 1–100 keys; this request has 101",
    );
    check_status(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![
                ("bw1", keys(60)),
                ("bw2", (0..41).map(|i| k2("p", &i.to_string())).collect()),
            ])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "this request has 101",
    );
    check_status(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("bw1", vec![k1("a"), k1("a")])])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "Provided list of item keys contains duplicates: item id (S) \"a\" of table bw1 is asked for twice",
    );
    check_status(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("nope", vec![k1("a")])])))
            .await,
        Code::NotFound,
        "ResourceNotFoundException",
        "Table: nope not found",
    );
    // A table named with nothing to do: refused, so a request names at most
    // as many tables as it has keys (or writes).
    check_status(
        stack
            .c()
            .batch_get_item(stack.req(batch_get(vec![("bw1", vec![k1("a")]), ("bw2", vec![])])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "BatchGetItem names table bw2 with no keys",
    );
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![("bw1", vec![])])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "BatchWriteItem takes 1–25 requests; this request has 0",
    );
    let one_put = write_put(k1("z"));
    check_status(
        stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![("bw1", vec![one_put]), ("bw2", vec![])])))
            .await,
        Code::InvalidArgument,
        "ValidationException",
        "BatchWriteItem names table bw2 with no requests",
    );
    stack.stop().await;
}

// ------------------------------------------------------------------ integrity

/// Reflection lists exactly what table-service's port serves, not
/// kms-service's services, whose descriptors are in the same contract.
#[tokio::test]
async fn reflection_lists_only_the_services_served() {
    let stack = start().await;
    let channel = Channel::from_shared(format!("http://{}", stack.tables.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let served = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "table.v1.TableService",
    ];
    let (v1, v1alpha) = reflection::list_services(channel).await;
    assert_eq!(v1, served);
    assert_eq!(v1alpha, served);
    stack.stop().await;
}

/// Item contents are only ever stored sealed: after puts, an update and a
/// batch write, no non-key value is in table-service's database or WAL, nor
/// in kms-service's files, while the key values (stored in clear, for
/// lookup and order) are.
#[tokio::test]
async fn no_item_value_reaches_the_disk_in_clear() {
    let stack = start().await;
    stack.create("sealed", ("id", S), None).await;
    let secret = "value that must stay sealed 9d2e";
    stack
        .put(
            "sealed",
            item(&[("id", s("key-in-clear-1")), ("v", s(secret))]),
        )
        .await;
    stack
        .c()
        .update_item(stack.req(pb::UpdateItemRequest {
            table_name: "sealed".into(),
            key: item(&[("id", s("key-in-clear-1"))]),
            actions: vec![set("w", s(&format!("{secret} (updated)")))],
            ..Default::default()
        }))
        .await
        .unwrap();
    stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![(
            "sealed",
            vec![write_put(item(&[
                ("id", s("key-in-clear-2")),
                ("v", s(secret)),
            ]))],
        )])))
        .await
        .unwrap();
    assert_eq!(
        stack
            .get("sealed", item(&[("id", s("key-in-clear-1"))]))
            .await
            .get("v"),
        Some(&s(secret))
    );
    let mut all = Vec::new();
    for dir in ["tables", "kms", "kms/audit"] {
        for entry in std::fs::read_dir(stack.dir.path().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                all.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let contains = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let tables_files: Vec<_> = all
        .iter()
        .filter(|(p, _)| p.starts_with(stack.dir.path().join("tables")))
        .collect();
    assert!(
        tables_files
            .iter()
            .any(|(_, bytes)| contains(bytes, b"key-in-clear-2")),
        "the key values are where the search looks: {:?}",
        tables_files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in &all {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "an item value is in {} in clear",
            path.display()
        );
    }
    stack.stop().await;
}

/// Overwrites the stored envelope of `to` with that of `from`; keys are
/// (table id, partition key bytes) of tables without a sort key.
/// Edits the database file under a running table-service. Its readers keep
/// their snapshot until it commits something itself (it is the only writer
/// of its data directory), so callers then write an unrelated item through
/// it before reading the edited one.
fn copy_envelope(db: &Path, from: (&str, &[u8]), to: (&str, &[u8])) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let envelope: Vec<u8> = conn
        .query_row(
            "SELECT envelope FROM items WHERE table_id = ?1 AND pk = ?2 AND sk = x''",
            rusqlite::params![from.0, from.1],
            |r| r.get(0),
        )
        .unwrap();
    let changed = conn
        .execute(
            "UPDATE items SET envelope = ?3 WHERE table_id = ?1 AND pk = ?2 AND sk = x''",
            rusqlite::params![to.0, to.1, envelope],
        )
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test]
async fn an_envelope_moved_to_another_item_or_table_is_refused() {
    // Once with the data-key cache warm for the moved key, once without it.
    for cache_ttl in [0, 60] {
        let stack = start_with(|c| c.data_key_cache_ttl_secs = cache_ttl).await;
        let one = stack.create("integ", ("id", S), None).await.table_id;
        let two = stack.create("integ2", ("id", S), None).await.table_id;
        let a = item(&[("id", s("A"))]);
        let bkey = item(&[("id", s("B"))]);
        stack
            .put("integ", with(&a, &[("secret", s("alpha-plaintext"))]))
            .await;
        stack
            .put("integ", with(&bkey, &[("secret", s("bravo"))]))
            .await;
        stack
            .put("integ2", with(&a, &[("secret", s("other"))]))
            .await;
        assert_eq!(
            stack.get("integ", a.clone()).await.get("secret"),
            Some(&s("alpha-plaintext"))
        );
        let db = stack.dir.path().join("tables/tables.db");

        copy_envelope(&db, (&one, b"A"), (&one, b"B"));
        stack.put("integ", item(&[("id", s("unrelated"))])).await;
        let moved = stack.try_get("integ", bkey.clone()).await;
        assert!(!format!("{moved:?}").contains("alpha"), "{moved:?}");
        // The message names the item, so it can be found and overwritten
        // or deleted; a page that holds it names it too.
        let damaged = "item integrity check failed for table integ, item id (S) \"B\": \
                       the stored item was altered or moved; overwrite or delete that item";
        check_status(moved, Code::DataLoss, "ItemIntegrityException", damaged);
        check_status(
            stack
                .scan(pb::ScanRequest {
                    table_name: "integ".into(),
                    ..Default::default()
                })
                .await,
            Code::DataLoss,
            "ItemIntegrityException",
            damaged,
        );
        check_status(
            stack
                .c()
                .update_item(stack.req(pb::UpdateItemRequest {
                    table_name: "integ".into(),
                    key: bkey.clone(),
                    actions: vec![set("x", s("y"))],
                    ..Default::default()
                }))
                .await,
            Code::DataLoss,
            "ItemIntegrityException",
            "integ",
        );

        copy_envelope(&db, (&one, b"A"), (&two, b"A"));
        stack.put("integ", item(&[("id", s("unrelated-2"))])).await;
        let moved = stack.try_get("integ2", a.clone()).await;
        assert!(!format!("{moved:?}").contains("alpha"), "{moved:?}");
        check_status(
            moved,
            Code::DataLoss,
            "ItemIntegrityException",
            "item integrity check failed for table integ2, item id (S) \"A\"",
        );

        // The source is untouched, and overwriting the damaged item repairs it.
        assert_eq!(
            stack.get("integ", a.clone()).await.get("secret"),
            Some(&s("alpha-plaintext"))
        );
        stack
            .put("integ", with(&bkey, &[("secret", s("bravo2"))]))
            .await;
        assert_eq!(
            stack.get("integ", bkey.clone()).await.get("secret"),
            Some(&s("bravo2"))
        );
        stack.stop().await;
    }
}

// ------------------------------------------------------- kms-service outage

/// Accepts connections on `addr` and never answers: a hung kms-service.
async fn unresponsive(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    })
}

/// With kms-service hung, a page of many items (more than are unwrapped
/// at once) fails after one kms timeout, not one per wave of unwraps; a
/// BatchWriteItem hands every put back unprocessed as quickly.
#[tokio::test]
async fn a_hung_kms_service_costs_a_page_one_timeout_not_one_per_wave() {
    let mut stack = start_with(|c| {
        c.data_key_cache_ttl_secs = 0;
        c.authz_cache_ttl_secs = 60;
        c.kms_timeout_ms = 1000;
        c.kms_unwrap_concurrency = 5;
    })
    .await;
    stack.create("waves", ("id", S), None).await;
    for i in 0..40 {
        stack
            .put("waves", item(&[("id", s(&format!("i{i:02}")))]))
            .await;
    }
    let page = || pb::ScanRequest {
        table_name: "waves".into(),
        limit: 40,
        ..Default::default()
    };
    assert_eq!(
        stack.scan(page()).await.unwrap().items.len(),
        40,
        "allow cached"
    );
    let kms_addr = stack.stop_kms().await;
    let hung = unresponsive(kms_addr).await;
    // Refused as unavailable, within about one timeout (eight waves of
    // five unwraps would take eight seconds).
    let promptly = |what: &str, started: Instant, result: Result<(), Status>| {
        let elapsed = started.elapsed();
        check_status(
            result,
            Code::Unavailable,
            "KMSUnavailableException",
            "unavailable",
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "{what} took {elapsed:?} with kms-service hung"
        );
    };
    let started = Instant::now();
    let result = stack.scan(page()).await.map(drop);
    promptly("a page of 40 items", started, result);
    let puts: Vec<pb::WriteRequest> = (0..25)
        .map(|i| write_put(item(&[("id", s(&format!("new{i:02}")))])))
        .collect();
    let started = Instant::now();
    let result = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![("waves", puts)])))
        .await
        .map(drop);
    promptly("a batch of 25 puts", started, result);
    hung.abort();
    let _ = hung.await;
    stack.restart_kms(kms_addr).await;
    assert_eq!(stack.scan(page()).await.unwrap().items.len(), 40);
    stack.stop().await;
}

/// kms-service stopped under concurrent PutItem load and started again:
/// every write in the meantime fails UNAVAILABLE naming kms-service, within
/// the kms-service timeout; the writers get through again by themselves
/// once it is back; every acknowledged item holds what was written, and
/// no item value reaches the disk in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_service_stopped_under_load_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut stack = start_with(|c| {
        c.data_key_cache_ttl_secs = 0;
        c.authz_cache_ttl_secs = 0;
        c.kms_timeout_ms = 1000;
    })
    .await;
    stack.create("load", ("id", S), None).await;
    const WRITERS: usize = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, token, stop) = (stack.c(), stack.admin.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut client = client;
            let (mut acked, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0;
            let mut last_ok = false;
            // Told to stop, a writer still goes on until a write of its
            // own succeeds (at most 20 s): kms-service is back by then.
            let mut deadline = None;
            while !(last_ok && stop.load(Ordering::SeqCst)) {
                if stop.load(Ordering::SeqCst) {
                    let at = *deadline.get_or_insert(Instant::now() + Duration::from_secs(20));
                    if Instant::now() > at {
                        break;
                    }
                }
                let id = format!("w{w}-{i:05}");
                let value = format!("sealed value of {id}");
                let started = Instant::now();
                let answer = client
                    .put_item(authed(
                        &token,
                        pb::PutItemRequest {
                            table_name: "load".into(),
                            item: item(&[("id", s(&id)), ("v", s(&value))]),
                            ..Default::default()
                        },
                    ))
                    .await;
                last_ok = answer.is_ok();
                match answer {
                    Ok(_) => acked.push((id, value)),
                    Err(status) => {
                        refused.push((status, started.elapsed()));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                i += 1;
            }
            (acked, refused, last_ok)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kms_addr = stack.stop_kms().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.restart_kms(kms_addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    for (w, writer) in writers.into_iter().enumerate() {
        let (a, r, last_ok) = writer.await.unwrap();
        // It got through again once kms-service was back, by itself.
        assert!(last_ok, "writer {w}'s last write failed");
        acked.extend(a);
        refused.extend(r);
    }
    assert!(
        !refused.is_empty(),
        "no write was refused while kms-service was down"
    );
    let named = format!("kms-service at http://{kms_addr} is unavailable");
    for (status, took) in &refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason).as_deref(),
            Some("KMSUnavailableException"),
            "{status:?}"
        );
        assert!(status.message().contains(&named), "{status:?}");
        assert!(*took < Duration::from_secs(4), "a refusal took {took:?}");
    }
    let last_refused = refused.len();
    for (id, value) in &acked {
        assert_eq!(
            stack.get("load", item(&[("id", s(id))])).await.get("v"),
            Some(&s(value)),
            "acknowledged item {id}"
        );
    }
    let stored: usize = scan_pages(
        &stack,
        &pb::ScanRequest {
            table_name: "load".into(),
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(Vec::len)
    .sum();
    assert_eq!(
        stored,
        acked.len(),
        "{last_refused} refused writes left items"
    );
    for file in ["tables/tables.db", "tables/tables.db-wal"] {
        let path = stack.dir.path().join(file);
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(12).any(|w| w == b"sealed value"),
                "an item value is in {file} in clear"
            );
        }
    }
    stack.stop().await;
}

#[tokio::test]
async fn kms_service_down_fails_fast_and_writes_nothing() {
    let mut stack = start_with(|c| {
        c.data_key_cache_ttl_secs = 0;
        c.authz_cache_ttl_secs = 0;
        c.kms_timeout_ms = 1000;
    })
    .await;
    stack.create("avail", ("id", S), None).await;
    let before = item(&[("id", s("before"))]);
    stack.put("avail", with(&before, &[("v", s("1"))])).await;

    let kms_addr = stack.stop_kms().await;
    let named = format!("kms-service at http://{kms_addr} is unavailable");
    let refused = |phase: &str| item(&[("id", s(&format!("refused-{phase}")))]);
    // First nothing listens at kms-service's address, then something that
    // accepts connections but never answers.
    for phase in ["stopped", "hung"] {
        let hung = match phase {
            "hung" => Some(unresponsive(kms_addr).await),
            _ => None,
        };
        for attempt in 0..2 {
            let started = Instant::now();
            let result = stack.try_get("avail", before.clone()).await;
            let elapsed = started.elapsed();
            check_status(result, Code::Unavailable, "KMSUnavailableException", &named);
            assert!(
                elapsed < Duration::from_secs(5),
                "{phase}: GetItem #{attempt} took {elapsed:?}"
            );

            let started = Instant::now();
            let result = stack
                .try_put("avail", with(&refused(phase), &[("v", s("2"))]), vec![])
                .await;
            let elapsed = started.elapsed();
            check_status(result, Code::Unavailable, "KMSUnavailableException", &named);
            assert!(
                elapsed < Duration::from_secs(5),
                "{phase}: PutItem #{attempt} took {elapsed:?}"
            );
        }
        if let Some(task) = hung {
            task.abort();
            let _ = task.await;
        }
    }

    // kms-service back on the same data directory and address; table-service
    // is not restarted and recovers by itself.
    stack.restart_kms(kms_addr).await;
    assert_eq!(
        stack.get("avail", before.clone()).await,
        with(&before, &[("v", s("1"))])
    );
    for phase in ["stopped", "hung"] {
        assert!(
            stack.get("avail", refused(phase)).await.is_empty(),
            "{phase}: a refused put was written"
        );
        stack
            .put("avail", with(&refused(phase), &[("v", s("3"))]))
            .await;
        assert_eq!(
            stack.get("avail", refused(phase)).await,
            with(&refused(phase), &[("v", s("3"))])
        );
    }
    stack.stop().await;
}

/// With kms-service down (and the decision cached), a BatchWriteItem
/// applies what needs no data key (its deletes) and returns every put,
/// unchanged and in order, as unprocessed instead of failing or dropping
/// them; once kms-service is back the same puts go through. A BatchGetItem
/// answers the tables it can read and hands back the keys of those whose
/// items need a data key. A batch of which nothing at all could be done
/// fails, naming kms-service, as DynamoDB's does.
#[tokio::test]
async fn batch_puts_that_cannot_be_sealed_come_back_unprocessed() {
    let mut stack = start_with(|c| {
        c.data_key_cache_ttl_secs = 0;
        c.authz_cache_ttl_secs = 60;
        c.kms_timeout_ms = 1000;
    })
    .await;
    stack.create("bwu", ("id", S), None).await;
    let key = |id: &str| item(&[("id", s(id))]);
    stack.put("bwu", with(&key("old"), &[("v", s("0"))])).await;
    // Warm the decisions the calls below need.
    let warm = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![(
            "bwu",
            vec![write_put(with(&key("warm"), &[("v", s("0"))]))],
        )])))
        .await
        .unwrap();
    assert!(warm.into_inner().unprocessed_items.is_empty());
    assert!(stack.get("bwu", key("absent")).await.is_empty());
    stack.create("bwu-empty", ("id", S), None).await;
    stack.create("bwu2", ("id", S), None).await;
    stack.put("bwu2", with(&key("two"), &[("v", s("2"))])).await;
    let gets = || {
        batch_get(vec![
            ("bwu", vec![key("old"), key("warm")]),
            ("bwu-empty", vec![key("nothing")]),
            ("bwu2", vec![key("two")]),
        ])
    };
    stack.c().batch_get_item(stack.req(gets())).await.unwrap();

    let kms_addr = stack.stop_kms().await;
    let got = stack
        .c()
        .batch_get_item(stack.req(gets()))
        .await
        .expect("the table that needs no data key is answered")
        .into_inner();
    assert!(got.responses["bwu-empty"].items.is_empty());
    assert!(!got.responses.contains_key("bwu"), "{:?}", got.responses);
    let handed_back: Vec<String> = got.unprocessed_keys["bwu"]
        .keys
        .iter()
        .map(|k| text(k.attributes.get("id")))
        .collect();
    assert_eq!(handed_back, ["old", "warm"]);
    assert_eq!(
        text(got.unprocessed_keys["bwu2"].keys[0].attributes.get("id")),
        "two"
    );
    assert!(!got.responses.contains_key("bwu2"));
    let named = format!("kms-service at http://{kms_addr} is unavailable");
    let only_sealed = stack
        .c()
        .batch_get_item(stack.req(batch_get(vec![("bwu", vec![key("old")])])))
        .await
        .expect_err("nothing could be read");
    assert_eq!(only_sealed.code(), Code::Unavailable, "{only_sealed:?}");
    assert!(only_sealed.message().contains(&named), "{only_sealed:?}");
    let only_puts = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![(
            "bwu",
            vec![write_put(with(&key("p"), &[("v", s("1"))]))],
        )])))
        .await
        .expect_err("nothing could be written");
    assert_eq!(only_puts.code(), Code::Unavailable, "{only_puts:?}");
    assert!(only_puts.message().contains(&named), "{only_puts:?}");
    // Handed back exactly as sent: numbers as the caller wrote them, not in
    // their canonical form ("1e38" would come back as 39 digits).
    let puts: Vec<pb::WriteRequest> = (0..5)
        .map(|i| {
            write_put(with(
                &key(&format!("new{i}")),
                &[
                    ("v", s(&i.to_string())),
                    ("big", n("1e38")),
                    ("odd", n("007.50")),
                ],
            ))
        })
        .collect();
    let mut requests = puts.clone();
    requests.insert(2, write_delete(key("old")));
    let unprocessed = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![("bwu", requests)])))
        .await
        .unwrap()
        .into_inner()
        .unprocessed_items;
    assert_eq!(unprocessed["bwu"].requests, puts);
    assert!(
        stack.get("bwu", key("old")).await.is_empty(),
        "the delete applied"
    );
    for i in 0..5 {
        assert!(stack.get("bwu", key(&format!("new{i}"))).await.is_empty());
    }

    stack.restart_kms(kms_addr).await;
    let retried = stack
        .c()
        .batch_write_item(stack.req(batch_write(vec![("bwu", puts)])))
        .await
        .unwrap()
        .into_inner()
        .unprocessed_items;
    assert!(retried.is_empty(), "{retried:?}");
    for i in 0..5 {
        let id = format!("new{i}");
        assert_eq!(
            stack.get("bwu", key(&id)).await,
            with(
                &key(&id),
                &[
                    ("v", s(&i.to_string())),
                    ("big", n(&format!("1{}", "0".repeat(38)))),
                    ("odd", n("7.5")),
                ]
            )
        );
    }
    stack.stop().await;
}

#[tokio::test]
async fn query_and_scan_pages_default_to_100_items() {
    let stack = start().await;
    stack.create("many", ("p", S), Some(("i", N))).await;
    for i in 0..150 {
        stack
            .put("many", item(&[("p", s("one")), ("i", n(&i.to_string()))]))
            .await;
    }
    let first = stack
        .query(pb::QueryRequest {
            table_name: "many".into(),
            partition_key_value: Some(s("one")),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 100);
    assert!(!first.last_evaluated_key.is_empty());
    let mut client = stack.client.clone();
    let scanned = client
        .scan(authed(
            &stack.admin,
            pb::ScanRequest {
                table_name: "many".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scanned.items.len(), 100);
    assert!(!scanned.last_evaluated_key.is_empty());
}

/// The HTTP/2 stream limit a server advertises, read from its SETTINGS over
/// a raw (plaintext) HTTP/2 connection.
async fn advertised_max_streams(addr: std::net::SocketAddr) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // Before the server's SETTINGS arrive the client assumes no limit.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut send = send.ready().await.unwrap();
    let advertised = loop {
        let limit = send.current_max_send_streams();
        if limit != usize::MAX || Instant::now() > deadline {
            break limit;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        send = send.ready().await.unwrap();
    };
    driver.abort();
    advertised
}

#[tokio::test]
async fn both_servers_bound_the_calls_one_connection_may_have_open() {
    let stack = start().await;
    let limit = lockbox_proto::transport::MAX_CONCURRENT_STREAMS as usize;
    let kms = stack.kms.as_ref().expect("kms-service runs");
    assert_eq!(advertised_max_streams(kms.addr).await, limit);
    assert_eq!(advertised_max_streams(stack.tables.addr).await, limit);

    // A client with more calls than that queues them on its side; all of
    // them are answered. Each asks kms-service for a decision (the allow
    // cache is off), so table-service's own connection to kms-service is
    // over the limit too.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..limit + 200 {
        let mut client = stack.client.clone();
        let admin = stack.admin.clone();
        set.spawn(async move {
            client
                .list_tables(authed(&admin, pb::ListTablesRequest::default()))
                .await
                .map(drop)
        });
    }
    let (mut answered, mut first_error) = (0, None);
    while let Some(joined) = set.join_next().await {
        match joined.expect("call task") {
            Ok(()) => answered += 1,
            Err(status) => {
                first_error.get_or_insert(status);
            }
        }
    }
    assert_eq!(answered, limit + 200, "first error: {first_error:?}");
    stack.stop().await;
}

#[tokio::test]
async fn expired_data_keys_are_swept_without_another_lookup() {
    let stack = start_with(|c| c.data_key_cache_ttl_secs = 1).await;
    stack.create("swept", ("id", S), None).await;
    let key = item(&[("id", s("A"))]);
    stack
        .put("swept", with(&key, &[("secret", s("plaintext"))]))
        .await;
    assert_eq!(
        stack.get("swept", key.clone()).await.get("secret"),
        Some(&s("plaintext"))
    );
    let tables = stack.tables.tables().expect("table-service runs");
    assert_eq!(tables.cached_data_keys(), 1, "the read cached its data key");
    // TTL 1 s, a sweep every second: gone within about 2 s, with no
    // lookup to notice it expired.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tables.cached_data_keys() > 0 {
        assert!(
            Instant::now() < deadline,
            "an expired data key was still held after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_credential_sent_twice_is_refused() {
    let stack = start().await;
    stack.create("twice", ("id", S), None).await;
    let mut request = stack.req(pb::GetItemRequest {
        table_name: "twice".into(),
        key: item(&[("id", s("a"))]),
    });
    request.metadata_mut().append(
        "authorization",
        format!("Bearer {}", stack.admin).parse().unwrap(),
    );
    check_status(
        stack.c().get_item(request).await,
        Code::Unauthenticated,
        "IncompleteSignatureException",
        "send one \"authorization: Bearer <token>\", not several",
    );
    stack.stop().await;
}

/// A DeleteTable that waits for a write in flight (here one stuck in
/// kms-service, which has stopped answering) holds up that table's writes
/// only: it waits for the stuck write, while a write to another table,
/// whose decision is cached and which needs no data key, goes through.
/// (`slow-a` and `other-c` use different table locks: 10 and 49 of 64.)
#[tokio::test]
async fn a_delete_waiting_for_a_slow_write_pauses_only_its_own_tables_writes() {
    let mut stack = start_with(|c| {
        c.data_key_cache_ttl_secs = 0;
        c.authz_cache_ttl_secs = 60;
        c.kms_timeout_ms = 5000;
    })
    .await;
    let key = |id: &str| item(&[("id", s(id))]);
    let delete_table = |name: &str| pb::DeleteTableRequest {
        table_name: name.into(),
    };
    // Warm every decision the calls below need (DeleteTable's by deleting
    // the table once).
    for name in ["slow-a", "other-c"] {
        stack.create(name, ("id", S), None).await;
    }
    stack
        .c()
        .delete_table(stack.req(delete_table("slow-a")))
        .await
        .unwrap();
    stack.create("slow-a", ("id", S), None).await;
    stack.put("slow-a", key("warm")).await;
    stack.put("other-c", key("x")).await;
    let delete_item = pb::DeleteItemRequest {
        table_name: "other-c".into(),
        key: key("x"),
        ..Default::default()
    };
    stack
        .c()
        .delete_item(stack.req(delete_item.clone()))
        .await
        .unwrap();

    let kms_addr = stack.stop_kms().await;
    let hung = unresponsive(kms_addr).await;
    let stuck = {
        let (mut client, request) = (
            stack.c(),
            stack.req(pb::PutItemRequest {
                table_name: "slow-a".into(),
                item: key("stuck"),
                ..Default::default()
            }),
        );
        tokio::spawn(async move { client.put_item(request).await })
    };
    // The put has its table's lock and waits for a data key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let deleting = {
        let (mut client, request) = (stack.c(), stack.req(delete_table("slow-a")));
        tokio::spawn(async move { client.delete_table(request).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack
        .c()
        .delete_item(stack.req(delete_item))
        .await
        .expect("a write to another table is not held up");
    assert!(
        !stuck.is_finished(),
        "the other table's write waited for the stuck one"
    );
    assert!(
        !deleting.is_finished(),
        "the delete did not wait for its table's write"
    );
    let refused = stuck
        .await
        .unwrap()
        .expect_err("kms-service never answered");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    deleting.await.unwrap().expect("the delete went through");
    hung.abort();
    stack.stop().await;
}

/// table-service names its caller's address (`x-forwarded-for`) when it
/// forwards the caller's credential, so kms-service counts a caller's
/// failed authentications past the rate against that caller, apart from
/// table-service's own calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_forwarded_authentications_count_against_the_callers_address() {
    let stack = start().await;
    // Past the default burst (60 of 600 a minute).
    for _ in 0..80 {
        let status = stack
            .c()
            .list_tables(authed(
                "lbx_not-a-real-token",
                pb::ListTablesRequest::default(),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    let kms = stack.kms.as_ref().unwrap();
    assert_eq!(kms.kms.record_unrecorded_failures().await.unwrap(), 1);
    let log = std::fs::read_to_string(stack.dir.path().join("kms/audit/audit.jsonl")).unwrap();
    let counted: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event_name"] == "UnauthenticatedCallsCounted")
        .collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert_eq!(
        counted[0]["source_address"],
        "127.0.0.1 (forwarded by a service)"
    );
}

/// BatchGetItem opens every item it found before the response budget
/// counts its size: a caller without kms:Decrypt on one table's key is
/// refused whatever the sizes, rather than handed that table's key back
/// unprocessed when its stored envelope would not have fit (which told
/// such a caller how large the item is, and that it exists).
#[tokio::test]
async fn batch_get_item_sizes_count_only_after_the_caller_unwrapped_them() {
    use lockbox_proto::kms::v1 as kms_pb;
    use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
    // A 1 MiB message limit: 512 KiB of items per answer.
    let stack = start_with(|c| c.max_message_bytes = 1024 * 1024).await;
    let token = stack.user("reader", &["TableFullAccess"]).await;
    // The admin's own key, which reader may not use; the other table is on
    // the service-managed key, which anyone may use through table-service.
    let closed_key = KeyManagementServiceClient::new(stack.kms_channel().await)
        .create_key(stack.req(kms_pb::CreateKeyRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .key_metadata
        .unwrap()
        .key_id;
    stack.create("aaa-open", ("id", S), None).await;
    run(&stack, create_with_key("zzz-closed", &closed_key))
        .await
        .unwrap();
    let key = item(&[("id", s("k"))]);
    stack
        .put("aaa-open", with(&key, &[("blob", b(&vec![1; 350 * 1024]))]))
        .await;
    stack
        .put(
            "zzz-closed",
            with(&key, &[("blob", b(&vec![2; 250 * 1024]))]),
        )
        .await;
    let both = || {
        batch_get(vec![
            ("aaa-open", vec![key.clone()]),
            ("zzz-closed", vec![key.clone()]),
        ])
    };

    let Err(refused) = stack.c().batch_get_item(authed(&token, both())).await else {
        panic!("reader may not decrypt zzz-closed's items, yet the batch succeeded");
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("kms:Decrypt") && refused.message().contains(&closed_key),
        "{refused:?}"
    );
    // The open table alone reads; the admin, who may use both keys, gets
    // what fits and the rest back unprocessed.
    let open = stack
        .c()
        .batch_get_item(authed(
            &token,
            batch_get(vec![("aaa-open", vec![key.clone()])]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.responses["aaa-open"].items.len(), 1);
    let admin = stack
        .c()
        .batch_get_item(stack.req(both()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(admin.responses["aaa-open"].items.len(), 1);
    assert_eq!(admin.unprocessed_keys["zzz-closed"].keys.len(), 1);
    stack.stop().await;
}

/// DeleteTable answers at once and its items are purged in the
/// background, a thousand per commit, so the writes of other tables never
/// wait behind one long deletion; the name is free again at once, for a
/// new, empty table; the other tables keep their items.
#[tokio::test]
async fn a_deleted_tables_items_are_purged_in_the_background() {
    let stack = start().await;
    let gone_id = stack.create("big", ("id", S), None).await.table_id;
    stack.create("kept", ("id", S), None).await;
    for chunk in 0..50 {
        let writes = (0..25)
            .map(|i| write_put(item(&[("id", s(&format!("{chunk}-{i}"))), ("v", n("1"))])))
            .collect();
        let unprocessed = stack
            .c()
            .batch_write_item(stack.req(batch_write(vec![("big", writes)])))
            .await
            .unwrap()
            .into_inner()
            .unprocessed_items;
        assert!(unprocessed.is_empty());
    }
    stack.put("kept", item(&[("id", s("stays"))])).await;
    let db = stack.dir.path().join("tables/tables.db");
    let rows = |table_id: &str| -> i64 {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT COUNT(*) FROM items WHERE table_id = ?1",
            [table_id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(rows(&gone_id), 1250);

    stack
        .c()
        .delete_table(stack.req(pb::DeleteTableRequest {
            table_name: "big".into(),
        }))
        .await
        .unwrap();
    // The name makes a new, empty table at once.
    let new_id = stack.create("big", ("id", S), None).await.table_id;
    assert_ne!(new_id, gone_id);
    let scanned = stack
        .scan(pb::ScanRequest {
            table_name: "big".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(scanned.items.is_empty());
    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&gone_id) > 0 {
        assert!(Instant::now() < deadline, "{} items left", rows(&gone_id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        stack.get("kept", item(&[("id", s("stays"))])).await,
        item(&[("id", s("stays"))])
    );
    stack.stop().await;
}

/// BatchGetItem unwraps a chunk of keys at a time (of
/// `--kms-unwrap-concurrency`) and stops once its answer is full: the keys
/// left come back unprocessed without their data keys being unwrapped, so
/// a batch of large items costs about one chunk of key uses more than it
/// answers, not one per key named.
#[tokio::test]
async fn batch_get_item_stops_unwrapping_once_its_answer_is_full() {
    // A 1 MiB message limit: 512 KiB of items per answer; chunks of 4.
    let stack = start_with(|c| {
        c.max_message_bytes = 1024 * 1024;
        c.kms_unwrap_concurrency = 4;
        c.data_key_cache_ttl_secs = 0;
    })
    .await;
    stack.create("large", ("id", S), None).await;
    let keys: Vec<Item> = (0..20)
        .map(|i| item(&[("id", s(&format!("k{i:02}")))]))
        .collect();
    for key in &keys {
        stack
            .put("large", with(key, &[("blob", b(&vec![3; 200 * 1024]))]))
            .await;
    }
    let decrypts = || {
        std::fs::read_to_string(stack.dir.path().join("kms/audit/audit.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"event_name\":\"Decrypt\""))
            .count()
    };
    let before = decrypts();
    let got = stack
        .c()
        .batch_get_item(stack.req(batch_get(vec![("large", keys.clone())])))
        .await
        .unwrap()
        .into_inner();
    // Two 200 KiB items fit in 512 KiB; the other 18 come back, in order.
    assert_eq!(got.responses["large"].items.len(), 2);
    let handed_back: Vec<_> = got.unprocessed_keys["large"]
        .keys
        .iter()
        .map(|k| text(k.attributes.get("id")))
        .collect();
    let expected: Vec<_> = (2..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(handed_back, expected);
    // One chunk of 4 was unwrapped; none of the 16 keys after it.
    assert_eq!(decrypts() - before, 4);
    stack.stop().await;
}
