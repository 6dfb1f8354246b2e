#!/usr/bin/env bash
# Lints every combination of features of every published library crate (the workspace's
# default members), so a crate built with any subset of its features compiles without a
# warning (an import used only under one feature, say). Installs cargo-hack from crates.io
# into ~/.cargo/bin first when it is missing (once per machine, about two minutes).
#
#   scripts/features.sh            every crate, every combination
#   scripts/features.sh -p NAME    one crate (other cargo-hack arguments go through too)
#
# Configuration (environment, with defaults):
#   CARGO_HACK_VERSION  ^0.6  (a version requirement for cargo install)
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_HACK_VERSION=${CARGO_HACK_VERSION:-^0.6}
hack_bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo-hack"

if ! [ -x "$hack_bin" ]; then
    mkdir -p .services
    echo "installing cargo-hack $CARGO_HACK_VERSION from crates.io (once per machine; log: .services/cargo-hack-install.log)"
    if ! cargo install cargo-hack --locked --version "$CARGO_HACK_VERSION" \
        >.services/cargo-hack-install.log 2>&1; then
        tail -n 20 .services/cargo-hack-install.log >&2
        echo "cargo install cargo-hack failed: check crates.io access and disk space" >&2
        exit 1
    fi
fi

# The published library crates: the workspace's default members.
packages=()
case "${1:-}" in
-p | --package) ;;
*) for crate in commerce-core commerce-outbox commerce-lock commerce-lock-macros \
    commerce-macro-support commerce-cache commerce-cache-macros commerce-client; do
    packages+=(-p "$crate")
done ;;
esac
# --no-dev-deps: only the library (and the binaries a feature enables) in each combination;
# the tests and examples are linted with every feature by .ci/run's clippy steps. cargo-hack
# takes the dev-dependencies out of the manifests while it runs (and puts them back), so
# --locked cannot be passed here.
cargo hack clippy --feature-powerset --no-dev-deps "${packages[@]}" "$@" -- -D warnings
