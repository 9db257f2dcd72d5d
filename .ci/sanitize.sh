#!/usr/bin/env bash
# The whole test suite against an ASan+UBSan build of the C extension.
#
#   bash .ci/sanitize.sh [pytest args...]      # default: the full suite (python -m pytest)
#
# The work tree is copied to a scratch directory and the extension is built there with
# ISSTREAMER_CFLAGS="-fsanitize=address,undefined ...", so the normal in-place build (used by
# anyone else running tests meanwhile) is never replaced and needs no restoring; the scratch
# copy is removed at the end. Python is not built with ASan, so libasan is LD_PRELOADed; the
# sender processes (python -m isstreamer.sender) and test scripts inherit it, and their
# PYTHONPATH points at the scratch copy, so they load the sanitized extension too. Leak
# detection is off (CPython keeps memory until exit by design); any ASan report or UBSan
# finding aborts the process that hit it, which fails its test.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
start=$(date +%s)

SAN_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
LIBASAN=$(gcc -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = libasan.so ]; then
  echo "FAIL: gcc has no libasan.so (apt-get install libasan8 / gcc)"; exit 1
fi
LIBASAN=$(readlink -f "$LIBASAN")

scratch=$(mktemp -d /tmp/isstreamer-sanitize.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
echo "== copying the work tree to $scratch"
tar -C "$ROOT" -c --exclude=./.git --exclude=./.venv --exclude=./fuzz-out --exclude='*.so' \
  --exclude=__pycache__ --exclude=./.hypothesis --exclude=./build --exclude=./.pytest_cache . |
  tar -C "$scratch" -x

echo "== building the extension with $SAN_CFLAGS"
(cd "$scratch" && ISSTREAMER_CFLAGS="$SAN_CFLAGS" python isstreamer/_build_native.py >build.log 2>&1) ||
  { tail -n 30 "$scratch/build.log"; echo "FAIL: sanitized build"; exit 1; }
so=$(ls "$scratch"/isstreamer/_native*.so)
syms=$(nm -D "$so")  # (not `nm | grep -q`: grep exiting early fails nm with SIGPIPE under pipefail)
if ! grep -q __asan_report <<<"$syms"; then
  echo "FAIL: $so is not instrumented"; exit 1
fi

# The dashboard test drives Chromium through Playwright's Node driver: they must not get
# libasan (Chromium spins forever with it). Node is started through a wrapper that drops it.
node=$(python -c 'from playwright._impl._driver import compute_driver_executable as c; print(c()[0])' \
  2>/dev/null || true)
if [ -n "$node" ] && [ -x "$node" ]; then
  printf '#!/bin/sh\nunset LD_PRELOAD ASAN_OPTIONS UBSAN_OPTIONS\nexec "%s" "$@"\n' "$node" >"$scratch/node-no-asan"
  chmod +x "$scratch/node-no-asan"
  export PLAYWRIGHT_NODEJS_PATH="$scratch/node-no-asan"
fi

export LD_PRELOAD="$LIBASAN${LD_PRELOAD:+:$LD_PRELOAD}"
# quarantine_size_mb=0: no delayed reuse of freed blocks. The C code allocates nothing; the
# quarantine only makes the processes' RSS grow by up to 256 MB, which the sender's memory test
# (flat RSS during an outage) rightly reports. Redzones still catch overreads of Python buffers.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:quarantine_size_mb=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
unset ISSTREAMER_NO_EXTENSION
cd "$scratch"
python - <<'EOF'
import os, sys
sys.path.insert(0, os.getcwd())
from isstreamer.ring import native_available, lib as _lib
import isstreamer._native as n
assert native_available(), "the sanitized extension did not import"
assert n.__file__.startswith(os.getcwd()), n.__file__
print("== sanitized extension loaded:", n.__file__)
EOF

echo "== python -m pytest ${*:-} (LD_PRELOAD=$LIBASAN)"
rc=0
python -m pytest -p no:cacheprovider "$@" || rc=$?
elapsed=$(( $(date +%s) - start ))
if [ "$rc" = 0 ]; then
  echo "sanitize: PASS in ${elapsed}s"
else
  echo "sanitize: FAIL (pytest exit $rc) in ${elapsed}s"
fi
exit "$rc"
