#!/bin/sh
# KMS Decrypt/GenerateDataKey and table-service throughput vs bare tonic RPCs (set BENCH_SECONDS to change
# the window per run, BENCH_CONCURRENCY=64 to run only that level, BENCH_ROUNDS to repeat each level's
# workloads other than 3 times).
set -eu
cd "$(dirname "$0")/.."
cargo bench -p lockbox-tests --bench kms_throughput "$@"
exec cargo bench -p lockbox-tests --bench table_throughput "$@"
