#!/usr/bin/env bash
# Makes sure the tools are there; installs what a fresh machine lacks (as root, with apt).
#   scripts/require-tools.sh            Rust (the workspace's rust-version or newer) and curl
#   scripts/require-tools.sh python     Python 3.10+ with venv (for Locust)
#   scripts/require-tools.sh rustup     rustup (make msrv installs the workspace's exact rust-version)
#   scripts/require-tools.sh chromium   Debian's Chromium (for the browser tests)
#   scripts/require-tools.sh graphviz   Graphviz's dot (make pictures)
#   scripts/require-tools.sh go         Go 1.24+ (builds etcd and kube-apiserver for the tests)
#   scripts/require-tools.sh bench      wrk and nginx (make bench)
#   scripts/require-tools.sh disk GB    GB gigabytes free beside the project (builds, images, kind)
set -euo pipefail

apt_install() { # package..., after a message saying what is missing
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "install it: sudo apt-get install $*" >&2
    exit 1
  fi
}

# rustup's environment, when a non-login shell lacks it on its PATH.
cargo_env() {
  if ! command -v "$1" >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
}

rust() {
  cargo_env cargo
  local need have
  need=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$(dirname "$0")/../Cargo.toml")
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust $need or newer (https://rustup.rs), then retry." >&2
    exit 1
  fi
  have=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    echo "rustc $have is older than $need: run 'rustup update stable'." >&2
    exit 1
  fi
  command -v curl >/dev/null 2>&1 || { echo "curl not found." >&2; apt_install curl; }
  # the test control plane makes its service-account key with openssl
  command -v openssl >/dev/null 2>&1 || { echo "openssl not found." >&2; apt_install openssl; }
}

golang() {
  if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "go not found: install Go 1.24 or newer (https://go.dev/dl/); Debian's golang package is too old." >&2
    exit 1
  fi
  local need=1.24 have
  have=$(go env GOVERSION | sed 's/^go//')
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
    echo "go $have is older than $need (kube-apiserver 1.34 needs it)." >&2
    exit 1
  fi
}

python() {
  if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found." >&2
    apt_install python3 python3-venv
  fi
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "python3 is $(python3 --version 2>&1); Locust needs 3.10 or newer." >&2
    exit 1
  fi
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "python3 cannot make virtualenvs." >&2
    apt_install python3-venv
  fi
}

rustup_() {
  cargo_env rustup
  command -v rustup >/dev/null 2>&1 && return
  echo "rustup not found: make msrv (a step of make test) installs the workspace's exact" \
    "rust-version with it; install it from https://rustup.rs, then retry." >&2
  exit 1
}

graphviz() {
  command -v dot >/dev/null 2>&1 && return
  echo "dot (Graphviz) not found." >&2
  apt_install graphviz
}

chromium() {
  [ -x /usr/bin/chromium ] && return
  echo "chromium not found." >&2
  apt_install chromium
}

bench() {
  command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && return
  echo "wrk or nginx not found." >&2
  apt_install wrk nginx-light
}

# A full disk fails a build or an image far from its cause; say it before starting.
disk() {
  local need=$1 free
  free=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
  if (( free < need )); then
    echo "only ${free} GB free on $(df -P . | awk 'NR == 2 {print $6}'); the tests need about ${need} GB" \
      "(a cold build, the images and the kind cluster). Free some: 'cargo clean' in other checkouts," \
      "'docker system prune'." >&2
    exit 1
  fi
}

if [ $# -eq 0 ]; then set -- rust; fi
while [ $# -gt 0 ]; do
  tool=$1; shift
  case $tool in
    rust | python | chromium | graphviz | bench) "$tool" ;;
    rustup) rustup_ ;;
    disk) disk "${1:?disk needs a size in GB}"; shift ;;
    go) golang ;;
    *) echo "require-tools: unknown tool $tool" >&2; exit 2 ;;
  esac
done
