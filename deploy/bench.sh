#!/bin/sh
# KMS Decrypt/GenerateDataKey throughput vs a bare tonic RPC (set BENCH_SECONDS to change the 3 s window,
# BENCH_CONCURRENCY=64 to run only that level of the KMS benchmark, BENCH_ROUNDS to repeat each level's
# workloads other than 3 times).
set -eu
cd "$(dirname "$0")/.."
cargo bench -p lockbox-tests --bench kms_throughput "$@"
exec cargo bench -p lockbox-tests --bench table_throughput "$@"
