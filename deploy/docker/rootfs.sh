#!/bin/sh
# Assembles the file tree of the Lockbox image: the two static binaries and
# the directories the services write to (owned by the unprivileged user the
# image runs as). Used by both Dockerfiles, so they build the same image.
#   rootfs.sh BIN_DIR OUT_DIR
set -eu
bin=$1
out=$2
rm -rf "$out"
mkdir -p "$out/bin" "$out/var/lib/lockbox/kms" "$out/var/lib/lockbox/audit" \
  "$out/var/lib/lockbox/table" "$out/var/lib/lockbox/secrets" "$out/tmp"
for exe in kms-service table-service; do
  cp "$bin/$exe" "$out/bin/$exe"
  # Debug info is kept for local profiling; the image does not need it.
  strip "$out/bin/$exe" 2>/dev/null || true
done
chmod 0700 "$out/var/lib/lockbox/kms" "$out/var/lib/lockbox/audit" \
  "$out/var/lib/lockbox/table" "$out/var/lib/lockbox/secrets"
chmod 1777 "$out/tmp"
