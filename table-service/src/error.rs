//! The one error type of table-service's domain layer; `grpc/status.rs`
//! turns it into a status. Errors that kms-service returned keep its code,
//! reason and message, so a refusal for lack of `kms:Decrypt` reaches the
//! caller in kms-service's words.

use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// kms-service answered with an error (access denied, disabled key,
    /// unauthenticated, …); passed through as it came.
    #[error("{message}")]
    Kms {
        code: tonic::Code,
        reason: String,
        message: String,
    },
    /// kms-service could not be reached in time.
    #[error("kms-service at {endpoint} is unavailable: {detail}")]
    KmsUnavailable { endpoint: String, detail: String },
    #[error("Requested resource not found: {0}")]
    ResourceNotFound(String),
    /// CreateTable of a name that is taken.
    #[error("{0}")]
    TableExists(String),
    /// The table is busy with something that must end first (a key change
    /// whose re-wrap is still running); the client should wait.
    #[error("{0}")]
    ResourceInUse(String),
    /// The table changed while the request was under way (a concurrent key
    /// change or delete won); the client may retry.
    #[error("{0}")]
    ConcurrentChange(String),
    #[error("{0}")]
    Validation(String),
    /// The answer would be larger than the server sends
    /// (`--max-message-bytes`).
    #[error("{0}")]
    ResponseTooLarge(String),
    #[error("The conditional request failed: {0}")]
    ConditionalCheckFailed(String),
    /// Stored item bytes failed authentication: tampered, or copied from
    /// another item or table. Never answered with data.
    #[error(
        "item integrity check failed for table {table}, item {key}: the stored item was altered or moved; overwrite or delete that item"
    )]
    ItemIntegrity { table: String, key: String },
    /// A key that items of the table are encrypted under was deleted (its
    /// deletion window passed): the items are intact but nobody can decrypt
    /// them any more. The message names the key and the table.
    #[error("{0}")]
    KeyDeleted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl TableError {
    pub fn reason(&self) -> &str {
        match self {
            TableError::Kms { reason, .. } => reason,
            TableError::KmsUnavailable { .. } => "KMSUnavailableException",
            TableError::ResourceNotFound(_) => "ResourceNotFoundException",
            // DynamoDB's reason for all three; the status code tells them apart.
            TableError::TableExists(_)
            | TableError::ResourceInUse(_)
            | TableError::ConcurrentChange(_) => "ResourceInUseException",
            // As for a request over the limit.
            TableError::Validation(_) | TableError::ResponseTooLarge(_) => "ValidationException",
            TableError::ConditionalCheckFailed(_) => "ConditionalCheckFailedException",
            TableError::ItemIntegrity { .. } => "ItemIntegrityException",
            // What kms-service says of a key that cannot be used in its state.
            TableError::KeyDeleted(_) => "KMSInvalidStateException",
            TableError::Unavailable(_) => "ServiceUnavailableException",
            TableError::Internal(_) => "InternalServerError",
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        TableError::Validation(message.into())
    }
}

impl From<ModelError> for TableError {
    fn from(e: ModelError) -> Self {
        TableError::Validation(e.to_string())
    }
}
