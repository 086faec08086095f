#!/usr/bin/env bash
# Builds the Lockbox image without pulling any base image: compiles static
# binaries on this machine (glibc, crt-static) and puts them on an empty base
# (FROM scratch). The result is the image deploy/Dockerfile builds.
#   deploy/docker/build-images.sh [TAG]      (default lockbox:local)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-${LOCKBOX_IMAGE:-lockbox:local}}
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$target" -p kms-service -p table-service
for exe in kms-service table-service; do
  if ldd "target/$target/release/$exe" 2>&1 | grep '=>' >/dev/null; then
    echo "target/$target/release/$exe is not statically linked" >&2
    exit 1
  fi
done
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
sh deploy/docker/rootfs.sh "target/$target/release" "$context/rootfs"
cp deploy/docker/Dockerfile.scratch "$context/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$context" >/dev/null 2>&1 \
  || DOCKER_BUILDKIT=0 docker build -t "$tag" "$context"
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
