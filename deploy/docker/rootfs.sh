#!/bin/sh
# Assembles the file tree of the Lockbox image: the two static binaries and
# the directories the services write to (owned by the unprivileged user the
# image runs as). Used by both Dockerfiles, so they build the same image.
#   rootfs.sh BIN_DIR OUT_DIR
set -eu
bin=$1
out=$2
rm -rf "$out"
dirs="kms audit table pki kms-tls table-tls tls credentials"
mkdir -p "$out/bin" "$out/etc" "$out/tmp"
for d in $dirs; do mkdir -p "$out/var/lib/lockbox/$d"; done
# Host names from /etc/hosts (which the container engine provides) first.
echo "hosts: files dns" > "$out/etc/nsswitch.conf"
for exe in kms-service table-service; do
  cp "$bin/$exe" "$out/bin/$exe"
  # Debug info is kept for local profiling; the image does not need it.
  strip "$out/bin/$exe" 2>/dev/null || true
done
for d in $dirs; do chmod 0700 "$out/var/lib/lockbox/$d"; done
chmod 1777 "$out/tmp"
