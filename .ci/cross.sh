#!/usr/bin/env bash
# Portability: compile csrc/*.c warning-free with gcc and clang for the host, for 32-bit ARM
# (armv7-a, armhf) and aarch64, and for Windows (mingw-w64), type-check the MSVC branch of
# csrc/atomics.h, and check that the 64-bit counters shared across processes stay lock-free atomics
# on 32-bit ARM (no __atomic_*_8 / __sync_*_8 library calls, which would take a lock that is
# private to each process and so would not be atomic across the mapping).
#
#   bash .ci/cross.sh
#
# Installs Debian's gcc-arm-linux-gnueabihf and gcc-aarch64-linux-gnu when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

CFLAGS="-std=c11 -Wall -Wextra -Werror -O2"
SRCS=(csrc/*.c)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

need=()
command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 || need+=(gcc-arm-linux-gnueabihf)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || need+=(gcc-aarch64-linux-gnu)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || need+=(gcc-mingw-w64-x86-64)
command -v clang >/dev/null 2>&1 || need+=(clang)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing ${need[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "FAIL: missing cross compilers: ${need[*]} (apt-get install them)"; exit 1
  fi
fi

echo "== no x86-only intrinsics or inline assembly in csrc"
if grep -nE '#include *<(x86|imm|emm|xmm|pmm|smm|nmm|wmm|avx)[a-z0-9]*intrin\.h>|__builtin_ia32_|\b_mm(256|512)?_[a-z]|__asm__|\basm *\(' \
    "${SRCS[@]}" csrc/*.h; then
  echo "FAIL: x86-specific code above"; status=1
else
  echo "   ok"
fi

compile() {  # compile <name> <cc> [extra flags...]
  local name=$1 cc=$2; shift 2
  mkdir -p "$work/$name"
  local ok=1
  for src in "${SRCS[@]}"; do
    if ! "$cc" $CFLAGS "$@" -c "$src" -o "$work/$name/$(basename "${src%.c}").o"; then ok=0; fi
  done
  return $(( 1 - ok ))
}

for target in "host:gcc" "clang:clang" "armv7-a:arm-linux-gnueabihf-gcc:-march=armv7-a+fp" "aarch64:aarch64-linux-gnu-gcc" \
              "windows-x64:x86_64-w64-mingw32-gcc"; do
  IFS=: read -r name cc extra <<<"$target"
  echo "== $name ($("$cc" -dumpmachine), $($cc -dumpversion)): $CFLAGS ${extra:-}"
  # shellcheck disable=SC2086
  if compile "$name" "$cc" $extra; then echo "   ok: ${#SRCS[@]} file(s), no warnings"; else echo "FAIL: $name"; status=1; continue; fi
  # shellcheck disable=SC2086
  if ! echo '_Static_assert(__atomic_always_lock_free(8, 0), "64-bit atomics are not lock-free");' |
      "$cc" $CFLAGS $extra -x c -c - -o "$work/$name/lockfree.o"; then
    echo "FAIL: $name: 64-bit atomics are not always lock-free"; status=1
  fi
  nm_tool="${cc%gcc}nm"
  case "$name" in host|clang) nm_tool=nm ;; esac
  calls=$("$nm_tool" -u "$work/$name"/*.o | grep -E '__atomic_|__sync_' || true)
  if [ -n "$calls" ]; then
    echo "FAIL: $name: atomic library calls (not lock-free across processes):"; echo "$calls"; status=1
  else
    echo "   ok: 64-bit atomics lock-free, no __atomic_*/__sync_* library calls"
  fi
done

# LDREXD/STREXD are what make the 8-byte atomics of ring.c lock-free on armv7-a
if [ -f "$work/armv7-a/ring.o" ]; then
  n=$(arm-linux-gnueabihf-objdump -d "$work/armv7-a/ring.o" | grep -cE 'ldrexd|strexd' || true)
  echo "== armv7-a: ring.o has $n LDREXD/STREXD instruction(s) for its 64-bit atomics"
  if [ "$n" = 0 ]; then echo "FAIL: expected LDREXD/STREXD in ring.o"; status=1; fi
fi

# MSVC: its branch of csrc/atomics.h (_Generic over the _Interlocked intrinsics) checked by
# clang in MSVC mode for x64 and ARM64 (no MSVC here: a syntax and type check, not a build; the
# C runtime's headers that clang's intrin.h wants are stubbed)
stubs="$work/msvc-stubs"
mkdir -p "$stubs"
echo 'typedef unsigned long long size_t;' >"$stubs/stdlib.h"
echo 'typedef int jmp_buf[16];' >"$stubs/setjmp.h"
: >"$stubs/malloc.h"
for arch in x86_64 aarch64; do
  if clang --target=$arch-pc-windows-msvc -fms-extensions -fms-compatibility -std=c11 -fsyntax-only -Wall -Wextra \
      -Werror -U__clang__ -U__GNUC__ -isystem "$stubs" -Icsrc csrc/test/msvc_atomics_check.c; then
    echo "== msvc-$arch: csrc/atomics.h's MSVC branch type-checks (clang in MSVC mode)"
  else
    echo "FAIL: msvc-$arch: csrc/atomics.h's MSVC branch"; status=1
  fi
done

if [ "$status" = 0 ]; then echo "cross: PASS"; else echo "cross: FAIL"; fi
exit "$status"
