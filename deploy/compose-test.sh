#!/usr/bin/env bash
# The Docker Compose deployment, end to end: builds the image without pulling
# anything, brings the stack up (init step, private CA, TLS between the
# services), runs the grpcurl walk-through through the published ports over
# TLS, restarts the kms-service container and checks that the data survived
# and that table-service recovered by itself, then tears everything down.
# Exit status 77 means no Docker engine answers, 78 that no compose tool is
# installed (the suite is skipped); anything else non-zero is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "no Docker engine answers (docker info failed)" >&2
  exit 77
fi
# The README's commands say `docker compose`; where only the older
# `docker-compose` is installed, the same commands run through it.
if ! command docker compose version >/dev/null 2>&1; then
  command -v docker-compose >/dev/null 2>&1 || {
    echo "neither 'docker compose' nor 'docker-compose' is installed" >&2
    exit 78
  }
  docker() { if [ "$1" = compose ]; then shift; command docker-compose "$@"; else command docker "$@"; fi; }
fi

work=
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export COMPOSE_FILE=$PWD/deploy/docker-compose.yml
export COMPOSE_PROJECT_NAME="lockbox-test-$$"
export KMS_PORT=${KMS_PORT:-$(free_port)}
export TABLE_PORT=${TABLE_PORT:-$(free_port)}
# An image of its own unless one is named, so a test run never replaces the
# image a deployment on this machine uses; removed afterwards.
own_image=
if [ -z "${LOCKBOX_IMAGE:-}" ]; then own_image="lockbox:compose-test-$$"; fi
export LOCKBOX_IMAGE=${LOCKBOX_IMAGE:-$own_image}
repo=$PWD
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then docker compose logs --no-color --tail 80 || true; fi
  docker compose down -v --remove-orphans >/dev/null 2>&1 || true
  if [ -n "$own_image" ]; then docker image rm "$own_image" >/dev/null 2>&1 || true; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
work=$(mktemp -d)

step() { printf '\n=== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
container() { docker compose ps -q "$1"; }
health() { docker inspect -f '{{.State.Health.Status}}' "$(container "$1")" 2>/dev/null || echo missing; }
wait_healthy() { # wait_healthy SERVICE SECONDS
  for _ in $(seq "$2"); do
    [ "$(health "$1")" = healthy ] && return 0
    sleep 1
  done
  fail "$1 is not healthy after $2 s (status: $(health "$1"))"
}

step "build the image ($LOCKBOX_IMAGE) without pulling a base image"
deploy/docker/build-images.sh

step "up"
cd "$work"
docker compose up -d
wait_healthy kms-service 120
wait_healthy table-service 120
docker compose ps

step "fetch the CA certificate and the administrator's token from the volumes"
docker cp "$(docker compose ps -q kms-service)":/var/lib/lockbox/tls/ca.crt .
docker cp "$(docker compose ps -q kms-service)":/var/lib/lockbox/kms/admin.token .
test -s ca.crt && test -s admin.token || fail "missing CA or token"
mkdir -p "$work/kms"
cp admin.token "$work/kms/admin.token"
grpcurl -cacert ca.crt localhost:$KMS_PORT list
kms=$(container kms-service)

# The README's grpcurl commands use -plaintext for the local stack; against
# the compose deployment the same commands take -cacert ca.crt instead. This
# shim makes exactly that substitution.
mkdir -p "$work/bin"
real_grpcurl=$(command -v grpcurl)
cat >"$work/bin/grpcurl" <<SHIM
#!/usr/bin/env bash
args=()
for a in "\$@"; do
  if [ "\$a" = -plaintext ]; then args+=(-cacert "$work/ca.crt"); else args+=("\$a"); fi
done
exec "$real_grpcurl" "\${args[@]}"
SHIM
chmod +x "$work/bin/grpcurl"

step "the grpcurl walk-through through the published ports, over TLS"
kms_bin="$repo/target/$(rustc -vV | sed -n 's/^host: //p')/release/kms-service"
TABLE="compose-orders-$$"
PATH="$work/bin:$PATH" KMS="localhost:$KMS_PORT" TABLES="localhost:$TABLE_PORT" DATA="$work/kms" \
  KMS_BIN="$kms_bin" TABLE="$TABLE" \
  FETCH_AUDIT="docker cp '$kms:/var/lib/lockbox/audit/.' '$work/kms/audit' && docker cp '$kms:/var/lib/lockbox/kms/root.key' '$work/kms/root.key'" \
  "$repo/deploy/walkthrough.sh"

step "each service holds only its own private key; no service holds the CA's"
for svc in kms-service table-service; do
  mkdir -p "$work/seen/$svc"
  docker cp "$(container "$svc")":/var/lib/lockbox/tls/. "$work/seen/$svc"
  found=$(cd "$work/seen/$svc" && ls | sort | tr '\n' ' ')
  [ "$found" = "ca.crt $svc.crt $svc.key " ] || fail "$svc sees: $found"
done
if docker cp "$(container kms-service)":/var/lib/lockbox/pki/ca.key "$work/seen/" 2>/dev/null \
  && [ -s "$work/seen/ca.key" ]; then
  fail "kms-service can read the CA's private key"
fi

step "plaintext is refused on the TLS ports"
if grpcurl -plaintext -max-time 5 "localhost:$KMS_PORT" list >/dev/null 2>&1; then
  fail "kms-service answered a plaintext connection"
fi

step "the audit log verifies inside the container"
docker compose exec -T kms-service kms-service audit verify /var/lib/lockbox/audit/audit.jsonl --root-key-file /var/lib/lockbox/kms/root.key

step "restart kms-service: data survives, table-service recovers by itself"
table=$(container table-service)
table_started=$(docker inspect -f '{{.State.StartedAt}}' "$table")
docker compose restart kms-service
wait_healthy kms-service 120
ADMIN=$(cat "$work/kms/admin.token")
ok=0
# A PutItem needs a fresh data key from kms-service (never cached), so its
# success shows table-service reconnected.
for _ in $(seq 60); do
  if out=$(grpcurl -cacert "$work/ca.crt" -H "authorization: Bearer $ADMIN" \
      -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"44\"}, \"order\": {\"s\": \"after restart\"}}}" \
      "localhost:$TABLE_PORT" table.v1.TableService/PutItem 2>&1); then
    ok=1; break
  fi
  sleep 1
done
[ "$ok" = 1 ] || fail "table-service did not recover after kms-service restarted: $out"
out=$(grpcurl -cacert "$work/ca.crt" -H "authorization: Bearer $ADMIN" \
  -d "{\"table_name\": \"$TABLE\", \"key\": {\"id\": {\"s\": \"42\"}}}" \
  "localhost:$TABLE_PORT" table.v1.TableService/GetItem)
echo "$out"
case "$out" in *'"s": "3 bikes"'*) ;; *) fail "the item did not survive: $out" ;; esac
[ "$(docker inspect -f '{{.State.StartedAt}}' "$table")" = "$table_started" ] \
  || fail "table-service was restarted; it should have reconnected on its own"
grpcurl -cacert "$work/ca.crt" -H "authorization: Bearer $ADMIN" -d '{}' \
  "localhost:$KMS_PORT" kms.v1.KeyManagementService/ListKeys | grep keyId >/dev/null \
  || fail "keys did not survive the restart"

step "down"
docker compose down -v --remove-orphans
echo "compose deployment: passed"
