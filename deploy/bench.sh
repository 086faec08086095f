#!/bin/sh
# KMS Decrypt/GenerateDataKey throughput vs a bare tonic RPC (set BENCH_SECONDS to change the 3 s window).
set -eu
cd "$(dirname "$0")/.."
cargo bench -p lockbox-tests --bench kms_throughput "$@"
exec cargo bench -p lockbox-tests --bench table_throughput "$@"
