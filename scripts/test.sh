#!/usr/bin/env bash
# Every check CI runs, in CI's order: formatting, lints, tests, doctests, docs.
# Needs only a Rust toolchain (cargo-nextest is used when installed); the tests bring their own
# Kafka (librdkafka's embedded mock cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

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
