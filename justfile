# kafka-smart-producer — the same checks CI runs (`just ci` is exactly CI).

default: ci

# Everything CI runs, in CI's order.
ci:
    scripts/test.sh

fmt:
    cargo fmt --all -- --check

lint:
    cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# Every cargo feature alone, and none (needs `cargo install cargo-hack`).
features:
    cargo hack check --each-feature --locked -p kafka-smart-producer -p ksp-producer -p ksp-redis -p ksp-core -p ksp-testkit

test:
    cargo nextest run --workspace --all-features --locked

doctest:
    cargo test --workspace --all-features --locked --doc

doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --locked --no-deps

# The embedded demo: one slow consumer, smart vs plain producer.
demo:
    cargo run --release --example quickstart

# The chaos soak: random overlapping faults under load from three instances, every message
# accounted for; one line per promise (`just soak 2h 42`). The test suite runs one minute of it.
soak duration="30m" seed="7":
    cargo run --release -p ksp-testkit --features redis --example soak -- --duration {{duration}} --seed {{seed}}

# Every benchmark; rewrites docs/benchmarks.md and docs/img/ (about 20 minutes; the
# instruction counts need valgrind).
bench:
    cargo bench -p ksp-producer --bench routing
    cargo run --release -p ksp-bench -- all
    cargo run --release -p ksp-bench -- dashboard

# The declared rust-version (1.88) with the newest dependencies that support it, in a
# throw-away worktree (the committed Cargo.lock pins some that need a newer compiler).
msrv:
    #!/usr/bin/env bash
    set -euo pipefail
    dir="$(mktemp -d)"
    trap 'git worktree remove --force "$dir"' EXIT
    git worktree add -q "$dir" HEAD
    cd "$dir"
    rustup toolchain install 1.88.0 --profile minimal
    CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback cargo update
    cargo +1.88.0 check --workspace --all-features
