#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15): tests/fuzz/run.sh [SECONDS]
#
# CI calls it after the test suite (.ci/run). It installs cargo-fuzz where it is missing and
# builds on a stable toolchain (RUSTC_BOOTSTRAP=1 lets stable take cargo-fuzz's -Z flags).
# It exits 0 without fuzzing, saying why, only where this machine cannot fuzz at all (no
# cargo-fuzz and no way to install it, no AddressSanitizer for this target, no C++ compiler
# for libFuzzer). A target that fails to build, or crashes, fails the run: the crashing input
# is kept under tests/fuzz/artifacts/TARGET/ and the command to reproduce it is printed.
set -euo pipefail

seconds="${1:-15}"
cd "$(dirname "$0")"

# cargo fuzz keeps its own build in tests/fuzz/target (sanitizer flags, another target dir).
unset CARGO_TARGET_DIR
export RUSTC_BOOTSTRAP=1

targets=(kv_request node_request raft_message log_record state_machine_record snapshot)

cannot_fuzz() {
    echo "fuzz: not fuzzing on this machine: $*" >&2
    exit 0
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2 || cannot_fuzz "cargo-fuzz is missing and would not install"
fi
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
echo 'fn main() {}' >"$probe/probe.rs"
rustc -Zsanitizer=address --edition 2021 -o "$probe/probe" "$probe/probe.rs" 2>"$probe/err" ||
    cannot_fuzz "rustc cannot build with AddressSanitizer here: $(head -c 300 "$probe/err")"
command -v "${CXX:-c++}" >/dev/null 2>&1 || cannot_fuzz "no C++ compiler to build libFuzzer"

# The workspace's versions of every dependency it shares (this crate's own lock is not kept):
# what is fuzzed is what ships.
cp ../../Cargo.lock Cargo.lock

# Debug assertions on: integer overflow panics too, as it does in the unit tests.
start=$SECONDS
cargo fuzz build --debug-assertions >&2
echo "fuzz: built in $((SECONDS - start)) s" >&2

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t"
    log="$probe/$t.log"
    # One process, no forks; an input running 10 s counts as a hang, one allocating more than
    # 2 GB as a crash. The new inputs go to corpus/ (kept between local runs, not committed).
    if ! cargo fuzz run --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t crashed; inputs in tests/fuzz/artifacts/$t/. Reproduce with" >&2
        echo "  (cd tests/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --debug-assertions $t artifacts/$t/<file>)" >&2
        exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    echo "fuzz: $t: ${runs:-?} runs in ${seconds} s, no crash" >&2
done
