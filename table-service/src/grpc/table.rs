//! `table.v1.TableService` over [`Tables`].

use std::collections::BTreeMap;
use std::sync::Arc;

use lockbox_proto::table::v1 as pb;
use lockbox_proto::table::v1::table_service_server::TableService;
use tonic::{Request, Response, Status};

use super::convert;
use super::{caller, to_status};
use crate::error::TableError;
use crate::service::{BatchWrite, Call, Outcome, Tables, validate_table_name};

pub struct TableGrpc {
    tables: Arc<Tables>,
}

impl TableGrpc {
    pub fn new(tables: Arc<Tables>) -> Self {
        TableGrpc { tables }
    }
}

/// Writes the request's structured event and maps the result. An answer
/// larger than `max_response_bytes` (a single huge item under a small
/// `--max-message-bytes`; pages are cut to fit) is refused here, naming the
/// setting, rather than failing in the transport after the event said "ok".
fn finish<T: prost::Message>(
    action: &str,
    table: &str,
    request_id: &str,
    outcome: &Outcome,
    max_response_bytes: usize,
    result: Result<T, TableError>,
) -> Result<Response<T>, Status> {
    let result = result.and_then(|response| {
        let size = response.encoded_len();
        if size > max_response_bytes {
            return Err(TableError::ResponseTooLarge(format!(
                "the answer would be {size} bytes, more than the {max_response_bytes} table-service sends (--max-message-bytes / TABLE_MAX_MESSAGE_BYTES): raise that setting to read this item"
            )));
        }
        Ok(response)
    });
    let principal = outcome.principal.as_deref().unwrap_or("-");
    match &result {
        Ok(_) => tracing::info!(
            target: "table_event",
            request_id, principal, action, table, outcome = "ok",
            kms_calls = outcome.kms_calls, cache_hits = outcome.cache_hits,
        ),
        Err(e) => tracing::info!(
            target: "table_event",
            request_id, principal, action, table, outcome = e.reason(),
            kms_calls = outcome.kms_calls, cache_hits = outcome.cache_hits,
        ),
    }
    result.map(Response::new).map_err(|e| to_status(&e))
}

/// The actions that change nothing: their work stops with the request.
const READS: [&str; 6] = [
    "DescribeTable",
    "ListTables",
    "GetItem",
    "Query",
    "Scan",
    "BatchGetItem",
];

/// Runs one request: extracts the caller, runs the body, logs the event.
///
/// A write's body runs as a task of its own, which the request's future
/// only awaits: a caller that goes away (a deadline, a reset stream) drops
/// the future, not the work. A write whose commit is already queued is
/// then still seen through (its table or item lock held until the commit
/// ends, the in-memory state updated with it, its event logged), never left
/// committed on disk and forgotten in memory. A read runs in the request's
/// own future, so one nobody waits for any more stops (a Query's data-key
/// unwraps with it).
macro_rules! handle {
    ($self:ident, $request:expr, $action:literal, |$tables:ident, $call:ident, $r:ident| $body:expr) => {{
        let request = $request;
        let credential = caller(&request);
        let $r = request.into_inner();
        let table = table_of(&$r);
        let $tables = $self.tables.clone();
        let max_response_bytes = $tables.max_response_bytes();
        let work = async move {
            match credential {
                Err(e) => finish(
                    $action,
                    &table,
                    "-",
                    &Outcome::default(),
                    max_response_bytes,
                    Err(e),
                ),
                Ok(credential) => {
                    let request_id = credential.request_id.clone();
                    let mut call = Call::new(credential);
                    // A name no table could have is a bad request whoever
                    // asks, before any decision is asked for.
                    let result = match $r.check_names() {
                        Err(e) => Err(e),
                        Ok(()) => {
                            let $call = &mut call;
                            let $tables = &$tables;
                            $body
                        }
                    };
                    finish(
                        $action,
                        &table,
                        &request_id,
                        &call.outcome,
                        max_response_bytes,
                        result,
                    )
                }
            }
        };
        if READS.contains(&$action) {
            work.await
        } else {
            // In the request's span, so its log lines keep the request id.
            match $self
                .tables
                .spawn_write(tracing::Instrument::in_current_span(work))
                .await
            {
                Ok(answer) => answer,
                Err(e) => Err(to_status(&TableError::Internal(format!(
                    "the {} request failed: {e}",
                    $action
                )))),
            }
        }
    }};
}

trait NamesTable {
    /// The table (or tables, comma-separated) for the request's event.
    fn table_name(&self) -> String;
    /// `Err` for a name no table could have.
    fn check_names(&self) -> Result<(), TableError>;
}

macro_rules! names_table {
    ($($t:ty),*) => { $(impl NamesTable for $t {
        fn table_name(&self) -> String { self.table_name.clone() }
        fn check_names(&self) -> Result<(), TableError> {
            validate_table_name(&self.table_name)
        }
    })* };
}
names_table!(
    pb::CreateTableRequest,
    pb::DescribeTableRequest,
    pb::UpdateTableRequest,
    pb::DeleteTableRequest,
    pb::PutItemRequest,
    pb::GetItemRequest,
    pb::UpdateItemRequest,
    pb::DeleteItemRequest,
    pb::QueryRequest,
    pb::ScanRequest
);
impl NamesTable for pb::ListTablesRequest {
    fn table_name(&self) -> String {
        "*".into()
    }
    /// Its start name is checked with its other fields.
    fn check_names(&self) -> Result<(), TableError> {
        Ok(())
    }
}
impl NamesTable for pb::BatchGetItemRequest {
    fn table_name(&self) -> String {
        self.request_items
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }
    fn check_names(&self) -> Result<(), TableError> {
        self.request_items
            .keys()
            .try_for_each(|name| validate_table_name(name))
    }
}
impl NamesTable for pb::BatchWriteItemRequest {
    fn table_name(&self) -> String {
        self.request_items
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }
    fn check_names(&self) -> Result<(), TableError> {
        self.request_items
            .keys()
            .try_for_each(|name| validate_table_name(name))
    }
}

fn table_of<R: NamesTable>(r: &R) -> String {
    r.table_name()
}

fn items_out(items: &[crate::model::Item]) -> Vec<pb::Item> {
    items
        .iter()
        .map(|i| pb::Item {
            attributes: convert::item_out(i),
        })
        .collect()
}

/// The bytes `item` takes in a response's list of items: its message and
/// the field tag and length prefix in front of it.
fn encoded_item_size(item: &crate::model::Item) -> usize {
    use prost::Message;
    let len = pb::Item {
        attributes: convert::item_out(item),
    }
    .encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

#[tonic::async_trait]
impl TableService for TableGrpc {
    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::CreateTableResponse>, Status> {
        handle!(self, request, "CreateTable", |tables, call, r| {
            match convert::schema(r.key_schema) {
                Ok(schema) => {
                    let key = r
                        .sse_specification
                        .map(|s| s.kms_key_id)
                        .unwrap_or_default();
                    tables
                        .create_table(call, &r.table_name, schema, &key)
                        .await
                        .map(|v| pb::CreateTableResponse {
                            table_description: Some(convert::table_description(&v)),
                        })
                }
                Err(e) => Err(e),
            }
        })
    }

    async fn describe_table(
        &self,
        request: Request<pb::DescribeTableRequest>,
    ) -> Result<Response<pb::DescribeTableResponse>, Status> {
        handle!(self, request, "DescribeTable", |tables, call, r| {
            tables
                .describe_table(call, &r.table_name)
                .await
                .map(|v| pb::DescribeTableResponse {
                    table: Some(convert::table_description(&v)),
                })
        })
    }

    async fn list_tables(
        &self,
        request: Request<pb::ListTablesRequest>,
    ) -> Result<Response<pb::ListTablesResponse>, Status> {
        handle!(self, request, "ListTables", |tables, call, r| {
            tables
                .list_tables(call, r.limit, &r.exclusive_start_table_name)
                .await
                .map(|(names, last)| pb::ListTablesResponse {
                    table_names: names,
                    last_evaluated_table_name: last.unwrap_or_default(),
                })
        })
    }

    async fn update_table(
        &self,
        request: Request<pb::UpdateTableRequest>,
    ) -> Result<Response<pb::UpdateTableResponse>, Status> {
        handle!(self, request, "UpdateTable", |tables, call, r| {
            match r.sse_specification {
                None => Err(TableError::validation(
                    "sse_specification is required: its kms_key_id names the key to switch to (alias/table-service for the service-managed key)",
                )),
                Some(sse) => tables
                    .update_table(call, &r.table_name, &sse.kms_key_id)
                    .await
                    .map(|v| pb::UpdateTableResponse {
                        table_description: Some(convert::table_description(&v)),
                    }),
            }
        })
    }

    async fn delete_table(
        &self,
        request: Request<pb::DeleteTableRequest>,
    ) -> Result<Response<pb::DeleteTableResponse>, Status> {
        handle!(self, request, "DeleteTable", |tables, call, r| {
            tables
                .delete_table(call, &r.table_name)
                .await
                .map(|v| pb::DeleteTableResponse {
                    table_description: Some(convert::table_description(&v)),
                })
        })
    }

    async fn put_item(
        &self,
        request: Request<pb::PutItemRequest>,
    ) -> Result<Response<pb::PutItemResponse>, Status> {
        handle!(self, request, "PutItem", |tables, call, r| {
            let parsed = (|| {
                Ok((
                    convert::item(r.item)?,
                    convert::conditions(r.conditions)?,
                    convert::return_values(r.return_values)?,
                ))
            })();
            match parsed {
                Ok((item, conditions, rv)) => tables
                    .put_item(
                        call,
                        &r.table_name,
                        item,
                        &conditions,
                        rv,
                        &encoded_item_size,
                    )
                    .await
                    .map(|old| pb::PutItemResponse {
                        attributes: old.as_ref().map(convert::item_out).unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn get_item(
        &self,
        request: Request<pb::GetItemRequest>,
    ) -> Result<Response<pb::GetItemResponse>, Status> {
        handle!(self, request, "GetItem", |tables, call, r| {
            match convert::item(r.key) {
                Ok(key) => tables
                    .get_item(call, &r.table_name, &key)
                    .await
                    .map(|item| pb::GetItemResponse {
                        item: item.as_ref().map(convert::item_out).unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemRequest>,
    ) -> Result<Response<pb::UpdateItemResponse>, Status> {
        handle!(self, request, "UpdateItem", |tables, call, r| {
            let parsed = (|| {
                Ok((
                    convert::item(r.key)?,
                    convert::actions(r.actions)?,
                    convert::conditions(r.conditions)?,
                    convert::return_values(r.return_values)?,
                ))
            })();
            match parsed {
                Ok((key, actions, conditions, rv)) => tables
                    .update_item(
                        call,
                        &r.table_name,
                        &key,
                        &actions,
                        &conditions,
                        rv,
                        &encoded_item_size,
                    )
                    .await
                    .map(|item| pb::UpdateItemResponse {
                        attributes: item.as_ref().map(convert::item_out).unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn delete_item(
        &self,
        request: Request<pb::DeleteItemRequest>,
    ) -> Result<Response<pb::DeleteItemResponse>, Status> {
        handle!(self, request, "DeleteItem", |tables, call, r| {
            let parsed = (|| {
                Ok((
                    convert::item(r.key)?,
                    convert::conditions(r.conditions)?,
                    convert::return_values(r.return_values)?,
                ))
            })();
            match parsed {
                Ok((key, conditions, rv)) => tables
                    .delete_item(
                        call,
                        &r.table_name,
                        &key,
                        &conditions,
                        rv,
                        &encoded_item_size,
                    )
                    .await
                    .map(|old| pb::DeleteItemResponse {
                        attributes: old.as_ref().map(convert::item_out).unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        handle!(self, request, "Query", |tables, call, r| {
            let parsed = (|| {
                let pk = r
                    .partition_key_value
                    .ok_or_else(|| TableError::validation("partition_key_value is required"))?;
                Ok((
                    convert::value("partition_key_value", pk)?,
                    convert::sort_condition(r.sort_key_condition)?,
                    convert::optional_key(r.exclusive_start_key)?,
                ))
            })();
            match parsed {
                Ok((pk, sort, start)) => tables
                    .query(
                        call,
                        &r.table_name,
                        &pk,
                        sort.as_ref(),
                        r.descending,
                        r.limit,
                        start.as_ref(),
                        &encoded_item_size,
                    )
                    .await
                    .map(|page| pb::QueryResponse {
                        items: items_out(&page.items),
                        last_evaluated_key: page
                            .last_evaluated_key
                            .as_ref()
                            .map(convert::item_out)
                            .unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        handle!(self, request, "Scan", |tables, call, r| {
            match convert::optional_key(r.exclusive_start_key) {
                Ok(start) => tables
                    .scan(
                        call,
                        &r.table_name,
                        r.limit,
                        start.as_ref(),
                        r.segment,
                        r.total_segments,
                        &encoded_item_size,
                    )
                    .await
                    .map(|page| pb::ScanResponse {
                        items: items_out(&page.items),
                        last_evaluated_key: page
                            .last_evaluated_key
                            .as_ref()
                            .map(convert::item_out)
                            .unwrap_or_default(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn batch_get_item(
        &self,
        request: Request<pb::BatchGetItemRequest>,
    ) -> Result<Response<pb::BatchGetItemResponse>, Status> {
        handle!(self, request, "BatchGetItem", |tables, call, r| {
            let parsed: Result<BTreeMap<String, Vec<crate::model::Item>>, TableError> = r
                .request_items
                .into_iter()
                .map(|(table, keys)| {
                    keys.keys
                        .into_iter()
                        .map(|k| convert::item(k.attributes))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|keys| (table, keys))
                })
                .collect();
            match parsed {
                Ok(requests) => tables
                    .batch_get_item(call, &requests, &encoded_item_size)
                    .await
                    .map(|(responses, unprocessed)| pb::BatchGetItemResponse {
                        responses: responses
                            .iter()
                            .map(|(t, items)| {
                                (
                                    t.clone(),
                                    pb::ItemList {
                                        items: items_out(items),
                                    },
                                )
                            })
                            .collect(),
                        unprocessed_keys: unprocessed
                            .iter()
                            .map(|(t, keys)| {
                                (
                                    t.clone(),
                                    pb::KeysAndAttributes {
                                        keys: items_out(keys),
                                    },
                                )
                            })
                            .collect(),
                    }),
                Err(e) => Err(e),
            }
        })
    }

    async fn batch_write_item(
        &self,
        request: Request<pb::BatchWriteItemRequest>,
    ) -> Result<Response<pb::BatchWriteItemResponse>, Status> {
        handle!(self, request, "BatchWriteItem", |tables, call, r| {
            use pb::write_request::Request as W;
            // Kept to hand unprocessed writes back exactly as sent (a
            // number's canonical form can be longer than what the caller
            // wrote, so a rebuilt answer could outgrow the message limit
            // after part of the batch was written).
            let sent = r.request_items.clone();
            let parsed: Result<BTreeMap<String, Vec<BatchWrite>>, TableError> = r
                .request_items
                .into_iter()
                .map(|(table, writes)| {
                    writes
                        .requests
                        .into_iter()
                        .map(|w| match w.request {
                            Some(W::PutRequest(i)) => {
                                convert::item(i.attributes).map(BatchWrite::Put)
                            }
                            Some(W::DeleteRequest(k)) => {
                                convert::item(k.attributes).map(BatchWrite::Delete)
                            }
                            None => Err(TableError::validation(
                                "a write request needs put_request or delete_request",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|w| (table, w))
                })
                .collect();
            match parsed {
                Ok(requests) => tables
                    .batch_write_item(call, &requests)
                    .await
                    .map(|unprocessed| pb::BatchWriteItemResponse {
                        unprocessed_items: unprocessed
                            .into_iter()
                            .map(|(t, indexes)| {
                                let requests = indexes
                                    .into_iter()
                                    .map(|i| sent[&t].requests[i].clone())
                                    .collect();
                                (t, pb::WriteRequests { requests })
                            })
                            .collect(),
                    }),
                Err(e) => Err(e),
            }
        })
    }
}
