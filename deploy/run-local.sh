#!/usr/bin/env bash
# Runs the product locally with embedded storage under ./data (created on the
# first run: root key, key store, audit log, administrator token). Ctrl-C
# stops it cleanly; running it again reuses the data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kms-service
DATA=${DATA:-./data/kms-service}
LISTEN=${KMS_LISTEN:-127.0.0.1:50051}
echo "kms-service on $LISTEN; administrator token in $DATA/admin.token"
echo "try: grpcurl -plaintext $LISTEN list"
exec ./target/release/kms-service serve --data-dir "$DATA" --listen "$LISTEN"
