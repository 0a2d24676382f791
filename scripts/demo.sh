#!/usr/bin/env bash
# Builds Tapestry and runs `tapestry demo` (needs root for network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v ip >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iproute2; }
cargo build --release --bins
exec ./target/release/tapestry demo "$@"
