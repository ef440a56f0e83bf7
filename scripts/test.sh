#!/usr/bin/env bash
# Every check CI runs, in CI's order: formatting, lints, tests, doctests, docs.
# Needs a Rust toolchain (cargo-nextest is used when installed). The tests bring their own Kafka
# (librdkafka's embedded mock cluster); the Redis tests start their own redis-server (and a
# 3-node Redis Cluster with redis-cli) on free loopback ports, `ksp watch` is tested under tmux,
# and promtool checks the alert rules, so those packages are installed here when they are
# missing (Debian/Ubuntu), and so is cargo-hack, which checks every feature alone.
set -euo pipefail
# CI builds once from clean: incremental state would only cost disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "packages the tests use: redis-server (Redis tests), tmux (ksp watch), promtool (alert rules)"
missing=()
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || missing+=(redis-server)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The package is installed for promtool; on a host with systemd it also starts a server.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    sudo_if_needed systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
redis-server --version
tmux -V
promtool --version 2>&1 | sed -n 1p

step "alert rules (promtool)"
promtool check rules docs/prometheus/alerts.yml
promtool test rules docs/prometheus/alerts_test.yml

step "format"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "every feature alone, and none (cargo hack)"
if ! cargo hack --version >/dev/null 2>&1; then
  cargo install cargo-hack --locked --quiet
fi
cargo hack check --each-feature --locked \
  -p kafka-smart-producer -p ksp-producer -p ksp-redis -p ksp-core -p ksp-testkit

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --profile ci
else
  cargo test --workspace --all-features --locked --lib --bins --tests --examples
fi

step "doctests"
cargo test --workspace --all-features --locked --doc

step "docs (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --locked --no-deps

step "all checks passed"
