//! The typed Rust clients in use: create a key, encrypt and decrypt under it,
//! create a table encrypted with it, put an item and read it back.
//!
//! Against the local stack (`deploy/run-local.sh`):
//!
//! ```sh
//! cargo run -p lockbox-proto --example quickstart
//! ```
//!
//! Environment: `KMS_ADDR` (default `http://127.0.0.1:50051`), `TABLES_ADDR`
//! (default `http://127.0.0.1:50052`), each a URL or a bare `host:port` as
//! the Python client test takes them, `ADMIN_TOKEN_FILE` (default
//! `data/kms-service/admin.token`), and `LOCKBOX_CA_FILE` for `https://`
//! addresses (the CA certificate of a TLS deployment; a bare `host:port`
//! is then reached over TLS).

use std::collections::HashMap;

use lockbox_proto::kms::v1 as kms;
use lockbox_proto::kms::v1::key_management_service_client::KeyManagementServiceClient;
use lockbox_proto::table::v1 as table;
use lockbox_proto::table::v1::attribute_value::Value;
use lockbox_proto::table::v1::table_service_client::TableServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

type Error = Box<dyn std::error::Error>;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// `addr` is a URL (`http://host:port`, `https://…`) or a bare
/// `host:port` (plaintext, or TLS when `LOCKBOX_CA_FILE` is set).
async fn connect(addr: String) -> Result<Channel, Error> {
    let addr = if addr.contains("://") {
        addr
    } else if std::env::var_os("LOCKBOX_CA_FILE").is_some() {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    };
    let mut endpoint = Endpoint::from_shared(addr)?;
    if let Ok(ca) = std::env::var("LOCKBOX_CA_FILE") {
        let pem = std::fs::read(&ca).map_err(|e| format!("cannot read {ca}: {e}"))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    Ok(endpoint.connect().await?)
}

/// Wraps a message with the caller's bearer token.
fn authorized<T>(token: &MetadataValue<tonic::metadata::Ascii>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

fn s(value: &str) -> table::AttributeValue {
    table::AttributeValue {
        value: Some(Value::S(value.to_string())),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let token_file = env_or("ADMIN_TOKEN_FILE", "data/kms-service/admin.token");
    let token = std::fs::read_to_string(&token_file)
        .map_err(|e| format!("cannot read the administrator token {token_file}: {e}"))?;
    let token: MetadataValue<_> = format!("Bearer {}", token.trim()).parse()?;

    let mut keys = KeyManagementServiceClient::new(
        connect(env_or("KMS_ADDR", "http://127.0.0.1:50051")).await?,
    );
    let mut tables =
        TableServiceClient::new(connect(env_or("TABLES_ADDR", "http://127.0.0.1:50052")).await?);

    let key = keys
        .create_key(authorized(
            &token,
            kms::CreateKeyRequest {
                description: "quickstart example".into(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .key_metadata
        .ok_or("CreateKey returned no key metadata")?;
    println!("created key {}", key.key_id);

    let context = HashMap::from([("purpose".to_string(), "quickstart".to_string())]);
    let sealed = keys
        .encrypt(authorized(
            &token,
            kms::EncryptRequest {
                key_id: key.key_id.clone(),
                plaintext: b"hello, lockbox".to_vec(),
                encryption_context: context.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    let opened = keys
        .decrypt(authorized(
            &token,
            kms::DecryptRequest {
                ciphertext_blob: sealed.ciphertext_blob.clone(),
                encryption_context: context,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    if opened.plaintext != b"hello, lockbox" {
        return Err("decrypt returned different plaintext".into());
    }
    println!(
        "encrypted {} bytes and decrypted them back",
        sealed.ciphertext_blob.len()
    );

    let table_name = format!("quickstart-{}", std::process::id());
    tables
        .create_table(authorized(
            &token,
            table::CreateTableRequest {
                table_name: table_name.clone(),
                key_schema: Some(table::KeySchema {
                    partition_key: Some(table::KeyElement {
                        name: "id".into(),
                        r#type: table::ScalarType::S as i32,
                    }),
                    sort_key: None,
                }),
                sse_specification: Some(table::SseSpecification {
                    kms_key_id: key.key_id.clone(),
                }),
            },
        ))
        .await?;
    tables
        .put_item(authorized(
            &token,
            table::PutItemRequest {
                table_name: table_name.clone(),
                item: HashMap::from([("id".into(), s("1")), ("note".into(), s("sealed"))]),
                ..Default::default()
            },
        ))
        .await?;
    let item = tables
        .get_item(authorized(
            &token,
            table::GetItemRequest {
                table_name: table_name.clone(),
                key: HashMap::from([("id".into(), s("1"))]),
            },
        ))
        .await?
        .into_inner()
        .item;
    if item.get("note") != Some(&s("sealed")) {
        return Err(format!("GetItem returned {item:?}").into());
    }
    println!(
        "table {table_name}: put and read back item id=1 (encrypted under {})",
        key.key_id
    );
    Ok(())
}
