#!/usr/bin/env bash
# The seed walk-through with grpcurl, against a running kms-service: create a
# key, encrypt and decrypt, see a user without kms:Decrypt refused, grant the
# user through the key policy, decrypt as the user, verify the audit log.
# Every command here is the one the README shows; each answer is checked.
#
#   KMS=127.0.0.1:50051 TABLES=127.0.0.1:50052 DATA=data/kms-service deploy/walkthrough.sh
set -euo pipefail

KMS=${KMS:-127.0.0.1:50051}
TABLES=${TABLES:-127.0.0.1:50052}
DATA=${DATA:-data/kms-service}
KMS_BIN=${KMS_BIN:-target/release/kms-service}
ADMIN_TOKEN_FILE=${ADMIN_TOKEN_FILE:-$DATA/admin.token}
USER_NAME=${USER_NAME:-nextwork-kms-user-$RANDOM}
TABLE=${TABLE:-nextwork-kms-table-$RANDOM}

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
expect() { # expect NEEDLE TEXT
  case "$2" in *"$1"*) ;; *) fail "expected \"$1\" in: $2" ;; esac
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

step "the services answer through reflection"
out=$(grpcurl -plaintext "$KMS" list)
echo "$out"
expect kms.v1.KeyManagementService "$out"
expect iam.v1.IdentityService "$out"
out=$(grpcurl -plaintext "$TABLES" list)
echo "$out"
expect table.v1.TableService "$out"

ADMIN=$(cat "$ADMIN_TOKEN_FILE")

step "create a customer master key"
KEY=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d '{"description": "nextwork-kms-key"}' \
  "$KMS" kms.v1.KeyManagementService/CreateKey | json '["keyMetadata"]["keyId"]')
echo "KEY=$KEY"

step "encrypt with an encryption context"
BLOB=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"key_id\": \"$KEY\", \"plaintext\": \"$(printf 'order 42: 3 bikes' | base64)\", \"encryption_context\": {\"table\": \"orders\"}}" \
  "$KMS" kms.v1.KeyManagementService/Encrypt | json '["ciphertextBlob"]')
echo "BLOB=$BLOB"

step "create a table encrypted with the key, put and get an item"
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"table_name\": \"$TABLE\", \"key_schema\": {\"partition_key\": {\"name\": \"id\", \"type\": \"SCALAR_TYPE_S\"}}, \"sse_specification\": {\"kms_key_id\": \"$KEY\"}}" \
  "$TABLES" table.v1.TableService/CreateTable
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"42\"}, \"order\": {\"s\": \"3 bikes\"}, \"total\": {\"n\": \"1499.50\"}}}" \
  "$TABLES" table.v1.TableService/PutItem
out=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"table_name\": \"$TABLE\", \"key\": {\"id\": {\"s\": \"42\"}}}" \
  "$TABLES" table.v1.TableService/GetItem)
echo "$out"
expect '"s": "3 bikes"' "$out"
expect '"n": "1499.5"' "$out"

step "decrypt returns the plaintext"
out=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"ciphertext_blob\": \"$BLOB\", \"encryption_context\": {\"table\": \"orders\"}}" \
  "$KMS" kms.v1.KeyManagementService/Decrypt)
echo "$out"
[ "$(echo "$out" | json '["plaintext"]' | base64 -d)" = "order 42: 3 bikes" ] || fail "wrong plaintext"

step "decrypt with a changed encryption context fails"
out=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"ciphertext_blob\": \"$BLOB\", \"encryption_context\": {\"table\": \"payments\"}}" \
  "$KMS" kms.v1.KeyManagementService/Decrypt 2>&1 || true)
echo "$out"
expect "Code: InvalidArgument" "$out"
expect "InvalidCiphertextException" "$out"

step "a user with TableFullAccess and no key permission"
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"user_name\": \"$USER_NAME\"}" "$KMS" iam.v1.IdentityService/CreateUser
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"user_name\": \"$USER_NAME\", \"policy_name\": \"TableFullAccess\"}" \
  "$KMS" iam.v1.IdentityService/AttachUserPolicy
USER_TOKEN=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"user_name\": \"$USER_NAME\"}" "$KMS" iam.v1.IdentityService/CreateAccessToken | json '["token"]')

step "the user is refused kms:Decrypt"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"ciphertext_blob\": \"$BLOB\", \"encryption_context\": {\"table\": \"orders\"}}" \
  "$KMS" kms.v1.KeyManagementService/Decrypt 2>&1 || true)
echo "$out"
expect "Code: PermissionDenied" "$out"
expect "not authorized to perform: kms:Decrypt" "$out"
expect "AccessDeniedException" "$out"

step "the user reads the table and is refused kms:Decrypt"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"key\": {\"id\": {\"s\": \"42\"}}}" \
  "$TABLES" table.v1.TableService/GetItem 2>&1 || true)
echo "$out"
expect "Code: PermissionDenied" "$out"
expect "not authorized to perform: kms:Decrypt" "$out"

step "the user writes to the table and is refused kms:GenerateDataKey"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"43\"}}}" \
  "$TABLES" table.v1.TableService/PutItem 2>&1 || true)
echo "$out"
expect "not authorized to perform: kms:GenerateDataKey" "$out"

step "the user's Query and Scan are refused kms:Decrypt too"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"partition_key_value\": {\"s\": \"42\"}}" \
  "$TABLES" table.v1.TableService/Query 2>&1 || true)
echo "$out"
expect "not authorized to perform: kms:Decrypt" "$out"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\"}" \
  "$TABLES" table.v1.TableService/Scan 2>&1 || true)
echo "$out"
expect "not authorized to perform: kms:Decrypt" "$out"

step "add the user to the key policy with the key-user actions"
POLICY=$(cat <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Sid": "EnableIdentityPolicies", "Effect": "Allow", "Principal": {"AWS": "account"}, "Action": "kms:*", "Resource": "*"},
  {"Sid": "AllowKeyCreatorFullControl", "Effect": "Allow", "Principal": {"AWS": "user/admin"}, "Action": "kms:*", "Resource": "*"},
  {"Sid": "AllowKeyUse", "Effect": "Allow", "Principal": {"AWS": "user/$USER_NAME"},
   "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"}]}
JSON
)
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "$(python3 -c 'import json,sys; print(json.dumps({"key_id": sys.argv[1], "policy": sys.argv[2]}))' "$KEY" "$POLICY")" \
  "$KMS" kms.v1.KeyManagementService/PutKeyPolicy

step "the user now decrypts"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"ciphertext_blob\": \"$BLOB\", \"encryption_context\": {\"table\": \"orders\"}}" \
  "$KMS" kms.v1.KeyManagementService/Decrypt)
echo "$out"
[ "$(echo "$out" | json '["plaintext"]' | base64 -d)" = "order 42: 3 bikes" ] || fail "wrong plaintext for the user"

step "the user now reads the table"
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"key\": {\"id\": {\"s\": \"42\"}}}" \
  "$TABLES" table.v1.TableService/GetItem)
echo "$out"
expect '"s": "3 bikes"' "$out"

step "the user now writes to the table"
grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"43\"}, \"order\": {\"s\": \"1 helmet\"}}}" \
  "$TABLES" table.v1.TableService/PutItem

step "with the key disabled, writes are refused; enabled again, they work"
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"key_id\": \"$KEY\"}" "$KMS" kms.v1.KeyManagementService/DisableKey
out=$(grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"44\"}}}" \
  "$TABLES" table.v1.TableService/PutItem 2>&1 || true)
echo "$out"
expect "Code: FailedPrecondition" "$out"
expect "DisabledException" "$out"
grpcurl -plaintext -H "authorization: Bearer $ADMIN" \
  -d "{\"key_id\": \"$KEY\"}" "$KMS" kms.v1.KeyManagementService/EnableKey
grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" \
  -d "{\"table_name\": \"$TABLE\", \"item\": {\"id\": {\"s\": \"44\"}}}" \
  "$TABLES" table.v1.TableService/PutItem

step "the audit log holds both decisions and verifies"
# A deployment whose audit log is not on this machine's disk (Docker Compose)
# copies it and the root key into $DATA first.
if [ -n "${FETCH_AUDIT:-}" ]; then eval "$FETCH_AUDIT"; fi
# The user's Decrypts through table-service: the refused one and the allowed
# one (the user's direct Decrypt has no via_service).
user_decrypts_via_tables() {
  grep "\"principal\":\"user/$USER_NAME\"" "$DATA/audit/audit.jsonl" \
    | grep '"event_name":"Decrypt"' \
    | grep '"via_service":"service/table-service"'
}
user_decrypts_via_tables | grep '"decision":"Deny"' >/dev/null || fail "no refused Decrypt of the user via table-service"
user_decrypts_via_tables | grep '"decision":"Allow"' >/dev/null || fail "no allowed Decrypt of the user via table-service"
"$KMS_BIN" audit verify "$DATA/audit/audit.jsonl" --root-key-file "$DATA/root.key"

step "one changed byte in a copy of the log is caught and named"
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
cp "$DATA/audit/audit.jsonl" "$copy/audit.jsonl"
sed -i '2s/"decision":"Allow"/"decision":"Allxw"/' "$copy/audit.jsonl"
out=$("$KMS_BIN" audit verify "$copy/audit.jsonl" 2>&1 || true)
echo "$out"
expect "FAILED: record 2" "$out"

echo
echo "walk-through: all steps passed"
