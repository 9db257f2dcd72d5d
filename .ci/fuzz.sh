#!/usr/bin/env bash
# Fuzz the C encoder, producer and aggregation kernel (csrc/fuzz/) for a bounded time; fail on any crash.
#
#   bash .ci/fuzz.sh            # ~60 s of fuzzing in total (FUZZ_SECONDS to change)
#
# With clang's libFuzzer (clang + libclang-rt-dev, installed from Debian when missing and we are
# root) each target is built with -fsanitize=fuzzer,address,undefined and run for its share of FUZZ_SECONDS
# on a scratch copy of its seed corpus (fuzz-out/, git-ignored), after replaying
# csrc/fuzz/corpus/ once. Without libFuzzer, gcc builds a standalone driver with ASan+UBSan that
# replays the corpus only (no mutation: the output says so).
# New crash inputs land in fuzz-out/artifacts/: copy them into csrc/fuzz/corpus/<target>/ as
# regress-* and add them to tests/test_fuzz_regressions.py.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
OUT=fuzz-out
TARGETS=(encode put aggregate)
declare -A MAX_LEN=([encode]=40000 [put]=8000 [aggregate]=8000)
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CSRC=$(echo csrc/*.c)  # every library source (the fuzz targets live in csrc/fuzz/)

have_libfuzzer() {
  command -v clang >/dev/null 2>&1 || return 1
  echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n){(void)d;(void)n;return 0;}' \
    > "$OUT/probe.c"
  clang -fsanitize=fuzzer,address,undefined "$OUT/probe.c" -o "$OUT/probe" >/dev/null 2>&1
}

mkdir -p "$OUT/artifacts"
if ! have_libfuzzer && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing clang and its runtimes (libFuzzer, ASan, UBSan: libclang-rt-dev) from Debian"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq clang libclang-rt-dev >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq clang libclang-rt-dev >/dev/null 2>&1; }; } || true
fi

status=0
if have_libfuzzer; then
  per=$(( FUZZ_SECONDS / ${#TARGETS[@]} ))
  [ "$per" -ge 1 ] || per=1
  echo "== libFuzzer ($(clang --version | head -1)), ${per}s per target"
  for t in "${TARGETS[@]}"; do
    bin="$OUT/fuzz_$t"
    clang -g -O1 -std=c11 -Wall -Wextra -fsanitize=fuzzer $SAN -Icsrc \
      -o "$bin" "csrc/fuzz/fuzz_$t.c" $CSRC -lm
    work="$OUT/corpus-$t"
    rm -rf "$work" && mkdir -p "$work"
    echo "-- $t: replaying csrc/fuzz/corpus/$t"
    if ! "$bin" -runs=0 "csrc/fuzz/corpus/$t" >"$OUT/$t-replay.log" 2>&1; then
      tail -n 40 "$OUT/$t-replay.log"; echo "FAIL: $t crashed on the kept corpus"; status=1; continue
    fi
    echo "-- $t: fuzzing for ${per}s"
    if "$bin" "$work" "csrc/fuzz/corpus/$t" -max_total_time="$per" -max_len="${MAX_LEN[$t]}" \
        -timeout=10 -rss_limit_mb=2048 -use_value_profile=1 -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$t-" >"$OUT/$t.log" 2>&1; then
      execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$t.log")
      rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$OUT/$t.log")
      cov=$(grep -o 'cov: [0-9]*' "$OUT/$t.log" | tail -1 || true)
      echo "   ok: ${execs:-?} execs (${rate:-?}/s), $cov, no crash"
    else
      grep -B2 -A30 -m1 'ERROR\|check failed\|runtime error' "$OUT/$t.log" || tail -n 40 "$OUT/$t.log"
      echo "FAIL: $t crashed; input saved as: $(ls -t "$OUT"/artifacts/"$t"-* 2>/dev/null | head -1)"
      status=1
    fi
  done
else
  echo "== clang/libFuzzer not available: gcc standalone replay of the corpus (no mutation)"
  for t in "${TARGETS[@]}"; do
    bin="$OUT/replay_$t"
    gcc -g -O1 -std=c11 -Wall -Wextra $SAN -Icsrc -o "$bin" \
      "csrc/fuzz/fuzz_$t.c" csrc/fuzz/standalone_main.c $CSRC -lm
    if "$bin" "csrc/fuzz/corpus/$t"; then echo "   ok: $t"; else echo "FAIL: $t"; status=1; fi
  done
fi

if [ "$status" = 0 ]; then echo "fuzz: PASS"; else echo "fuzz: FAIL"; fi
exit "$status"
