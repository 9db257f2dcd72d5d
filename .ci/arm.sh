#!/usr/bin/env bash
# ARM, run rather than only compiled: csrc/ built for aarch64 and armv7 (armhf, -march=armv7-a),
# statically linked, and executed under qemu-user, next to the same build for the host:
#
#   - csrc/test/native_check.c: exact JSON of known events, bucket splits, a wrapping segment,
#     a forked producer process feeding this one through a MAP_SHARED ring, cross-process
#     64-bit atomic adds (LDREXD/STREXD on armv7), iss_dtoa against repr() strings and strtod;
#   - the fuzz targets (csrc/fuzz/) replaying their kept corpora through standalone_main.c;
#   - iss_dtoa's text for 200,000 pseudo-random doubles, compared with Python's repr() here.
#
#   bash .ci/arm.sh
#
# qemu-user emulates the guest's instructions with the host's memory ordering (x86-64 is
# stronger than ARM's), so these runs prove the code and its atomics work on ARM, not that
# every ordering is right on real weakly-ordered hardware; the release/acquire pairs are
# reviewed for that, and cross.sh checks the 64-bit atomics are lock-free instructions.
#
# Installs Debian's qemu-user-static and the cross compilers when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

CFLAGS="-std=c11 -O2 -Wall -Wextra -Werror"
SRCS=(csrc/*.c)
DTOA_SAMPLES=${DTOA_SAMPLES:-200000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

need=()
command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "FAIL: missing ${need[*]} (apt-get install them)"; exit 1
  fi
fi

# run <label> <cmd...>: run a check, print its last line, record a failure
run() {
  local label=$1; shift
  local t0=$SECONDS
  if "$@" >"$work/out" 2>&1; then
    echo "   ok   $label ($((SECONDS - t0)) s): $(tail -n 1 "$work/out" | cut -c1-170)"
  else
    echo "   FAIL $label:"; tail -n 20 "$work/out" | sed 's/^/   | /'; status=1
  fi
}

# target name : C compiler : extra flags : runner (empty: native)
for target in "host-$(uname -m):gcc::" \
              "aarch64:aarch64-linux-gnu-gcc::qemu-aarch64-static" \
              "armv7:arm-linux-gnueabihf-gcc:-march=armv7-a+fp:qemu-arm-static"; do
  IFS=: read -r name cc extra runner <<<"$target"
  echo "== $name: $cc $extra -static${runner:+, run under $runner}"
  bin="$work/$name"
  mkdir -p "$bin"
  build_ok=1
  # shellcheck disable=SC2086
  $cc $CFLAGS $extra -static -Icsrc -o "$bin/native_check" csrc/test/native_check.c "${SRCS[@]}" -lm || build_ok=0
  for t in put encode aggregate; do
    # shellcheck disable=SC2086
    $cc -std=c11 -O1 -g $extra -static -Icsrc -o "$bin/replay_$t" \
      "csrc/fuzz/fuzz_$t.c" csrc/fuzz/standalone_main.c "${SRCS[@]}" -lm || build_ok=0
  done
  if [ "$build_ok" = 0 ]; then echo "   FAIL: $name: build"; status=1; continue; fi
  # shellcheck disable=SC2206
  exe=($runner)
  run "native_check" "${exe[@]}" "$bin/native_check"
  for t in put encode aggregate; do
    n=$(find "csrc/fuzz/corpus/$t" -type f | wc -l)
    run "fuzz_$t replays its $n corpus inputs" \
      bash -c '"$@" && echo "no crash"' _ "${exe[@]}" "$bin/replay_$t" "csrc/fuzz/corpus/$t"
  done
  "${exe[@]}" "$bin/native_check" --dtoa-dump "$DTOA_SAMPLES" >"$work/dtoa-$name.txt" ||
    { echo "   FAIL: $name: --dtoa-dump"; status=1; }
done

echo "== iss_dtoa vs Python's repr(), $DTOA_SAMPLES doubles per target"
for f in "$work"/dtoa-*.txt; do
  name=$(basename "$f" .txt); name=${name#dtoa-}
  run "$name" python3 - "$f" "$DTOA_SAMPLES" <<'EOF'
import struct, sys
path, want = sys.argv[1], int(sys.argv[2])
bad = n = 0
with open(path) as f:
    for line in f:
        bits, text = line.split()
        v = struct.unpack("<d", bytes.fromhex(bits)[::-1])[0]
        n += 1
        if repr(v) != text:
            bad += 1
            if bad <= 5:
                print(f"{bits}: iss_dtoa {text!r}, repr {repr(v)!r}")
if n != want or bad:
    sys.exit(f"{bad} of {n} differ (expected {want} lines)")
print(f"all {n} equal to repr()")
EOF
done

# binfmt_misc decides whether ARM binaries can exec each other, which the package in an ARM
# Debian root needs (the sender is a subprocess). Report what this machine offers: the global
# instance, or a private one in a user namespace (Linux >= 6.7; nothing global changes), which
# .ci/arm_e2e.sh uses.
if [ -e /proc/sys/fs/binfmt_misc/status ]; then
  echo "== binfmt_misc: global instance mounted ($(cat /proc/sys/fs/binfmt_misc/status))"
elif unshare --user --map-root-user --mount \
    sh -c 'mount -t binfmt_misc none /proc/sys/fs/binfmt_misc' >/dev/null 2>&1; then
  echo "== binfmt_misc: not mounted globally; a private instance mounts in a user namespace"
else
  echo "== binfmt_misc: unavailable (neither mounted nor mountable in a user namespace)"
fi
echo "   (the package in arm64 and armhf Debian roots: .ci/arm_e2e.sh; README, Installing)"

if [ "$status" = 0 ]; then echo "arm: PASS ($SECONDS s)"; else echo "arm: FAIL ($SECONDS s)"; fi
exit "$status"
