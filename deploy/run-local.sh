#!/usr/bin/env bash
# Runs the product locally with embedded storage under ./data: kms-service on
# 127.0.0.1:50051 and table-service on 127.0.0.1:50052. The first run creates
# the root key, the key store, the audit log, the administrator's token and
# table-service's credential. Ctrl-C stops both cleanly; running it again
# reuses the data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p kms-service -p table-service
DATA=${DATA:-./data}
KMS_LISTEN=${KMS_LISTEN:-127.0.0.1:50051}
TABLE_LISTEN=${TABLE_LISTEN:-127.0.0.1:50052}
mkdir -p "$DATA"

# Each service in a session of its own, so a signal for this script (a
# Ctrl-C, a SIGTERM to its process group) reaches it alone, and it passes
# one SIGTERM to each service: a service signalled twice exits at once,
# unfinished. A second Ctrl-C does pass a second one on, to stop at once.
stopping=0
kms=""
tables=""
stop() {
  stopping=1
  for pid in $kms $tables; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap stop HUP INT QUIT TERM
# Without setsid (macOS), the services share this script's process group:
# a Ctrl-C reaches them too, and they stop at once rather than cleanly.
command -v setsid >/dev/null || setsid() { "$@"; }
# The exit status of service $1, waiting through the signals that stop it.
status_of() {
  while :; do
    if wait "$1"; then return 0; fi
    kill -0 "$1" 2>/dev/null || { wait "$1"; return; }
  done
}
setsid ./target/release/kms-service serve --data-dir "$DATA/kms-service" --listen "$KMS_LISTEN" \
  --table-service-token-file "$DATA/kms-service/table-service.token" &
kms=$!
for _ in $(seq 100); do
  [ "$stopping" = 1 ] && break
  [ -s "$DATA/kms-service/table-service.token" ] && break
  kill -0 "$kms" 2>/dev/null || { echo "kms-service failed to start" >&2; exit 1; }
  sleep 0.1 || true  # a signal for the group ends the sleep too
done
if [ "$stopping" = 0 ]; then
  setsid ./target/release/table-service serve --data-dir "$DATA/table-service" --listen "$TABLE_LISTEN" \
    --kms-endpoint "http://$KMS_LISTEN" --token-file "$DATA/kms-service/table-service.token" &
  tables=$!
  echo "kms-service on $KMS_LISTEN, table-service on $TABLE_LISTEN"
  echo "administrator token: $DATA/kms-service/admin.token"
  echo "try: grpcurl -plaintext $KMS_LISTEN list"
fi
# When one service ends by itself, the other is stopped too.
while [ "$stopping" = 0 ]; do
  kill -0 "$kms" 2>/dev/null || break
  [ -z "$tables" ] || kill -0 "$tables" 2>/dev/null || break
  sleep 0.5 || true
done
if [ "$stopping" = 0 ]; then
  echo "a service exited by itself; stopping the other" >&2
  stop
fi
rc=0
status_of "$kms" || { rc=$?; echo "kms-service exited with status $rc" >&2; }
if [ -n "$tables" ]; then
  status_of "$tables" || { r=$?; rc=$r; echo "table-service exited with status $r" >&2; }
fi
exit "$rc"
