#!/usr/bin/env bash
# Makes sure the Rust toolchain and curl are there; installs what a fresh machine lacks.
set -euo pipefail
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust 1.89 or newer (https://rustup.rs), then retry." >&2
  exit 1
fi
need=1.89
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
  echo "rustc $have is older than $need: run 'rustup update stable'." >&2
  exit 1
fi
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "curl not found: install it (apt-get install curl)." >&2
    exit 1
  fi
fi
