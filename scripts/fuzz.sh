#!/usr/bin/env bash
# Fuzzes the reference app's request decoders (reference-app/fuzz, cargo-fuzz on nightly) for a
# bounded time per target; exits non-zero when a target crashes (a panic, an assertion of the
# property, a sanitizer finding), leaving the input under reference-app/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 every target for FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh --short         every target for 20 s each (CI)
#   scripts/fuzz.sh place_order     only the named targets (with or without --short)
#
# Targets (reference-app/fuzz/fuzz_targets):
#   place_order   bytes as the body of POST /api/v1/orders: commerce-client's decode (the app's Json extractor) into
#                 commerce-client's PlaceOrder, then commerce-core's order validation
#   json_bodies   bytes as the other JSON bodies (first byte: product creation, rename,
#                 stock receipt or order)
#
# Each run starts from the seeds in reference-app/fuzz/seeds/<target>/ (copied into the
# working corpus, reference-app/fuzz/corpus/<target>/, which git ignores and later runs reuse).
# A crash replays with `cargo +nightly fuzz run --fuzz-dir reference-app/fuzz <target> <file>`.
# Needs the nightly toolchain; installs cargo-fuzz from crates.io when it is missing.
# Settings (environment, with defaults):
#   FUZZ_SECONDS   60 (20 with --short)  fuzzing time per target
#   FUZZ_MAX_LEN   4096                  longest input libFuzzer generates, bytes
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --short) short=true ;;
        -*) echo "unknown option $arg (--short is the only one)" >&2; exit 2 ;;
        *) targets+=("$arg") ;;
    esac
done
if [ -n "${FUZZ_SECONDS:-}" ]; then
    seconds=$FUZZ_SECONDS
elif $short; then
    seconds=20
else
    seconds=60
fi
max_len=${FUZZ_MAX_LEN:-4096}
fuzz_dir=reference-app/fuzz

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz (once per machine)"
    cargo install cargo-fuzz --locked
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
fi

# One build of every target first, so the fuzzing time is not spent compiling.
echo "== building the fuzz targets"
cargo +nightly fuzz build --fuzz-dir "$fuzz_dir"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0
for target in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$target"
    mkdir -p "$corpus"
    if [ -d "$fuzz_dir/seeds/$target" ]; then
        cp -n "$fuzz_dir/seeds/$target"/* "$corpus"/ 2>/dev/null || true
    fi
    echo "== fuzzing $target for ${seconds}s"
    # libFuzzer's progress goes to a log; its end is shown (all of its report on a crash).
    if cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -dict="$fuzz_dir/json.dict" -print_final_stats=1 >"$logs/$target.log" 2>&1; then
        grep -E '^(Done|stat::)' "$logs/$target.log" || true
        runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$logs/$target.log" \
            | grep -Eo '[0-9]+$' | tail -1)
        echo "== $target: no crash in ${seconds}s (${runs:-?} executions)"
    else
        tail -n 60 "$logs/$target.log" >&2
        echo "== $target: CRASH (the input is under $fuzz_dir/artifacts/$target/)" >&2
        status=1
    fi
done
exit $status
