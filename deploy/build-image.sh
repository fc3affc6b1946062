#!/usr/bin/env bash
# Builds static binaries and the `kv:dev` image from deploy/Dockerfile.
# Static glibc needs the explicit --target; BuildKit (buildx) is not installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target" --bins
mkdir -p deploy/bin
cp "target/$target/release/kvnode" "target/$target/release/kvrouter" "target/$target/release/kvctl" deploy/bin/
DOCKER_BUILDKIT=0 docker build -t "${IMAGE:-kv:dev}" -f deploy/Dockerfile deploy
