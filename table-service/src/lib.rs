//! table-service: placeholder crate; the item store arrives with its own issue.
