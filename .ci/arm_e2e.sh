#!/usr/bin/env bash
# The package, not only csrc/, on ARM: Debian roots for arm64 (aarch64) and armhf (32-bit armv7,
# as on 32-bit Raspberry Pi OS) run under qemu-user, and in each root, as a user on a Pi would:
#
#   1. a fresh venv of Debian's python3; `pip install` of this checkout's sdist, so the cffi
#      extension is compiled by the root's gcc (the log shows pip building the wheel for the
#      root's platform tag and the ELF machine of the _native module it installed);
#      stats()["backend"] == "native";
#   2. `isstreamer demo --exit` with a reduced event count: logged must equal delivered;
#   3. 18 cases of the test suite, the installed package under test: the ring layout against
#      the C structs (32-bit ABI), fork, spawn and forkserver pools, SIGKILL of the producer,
#      an outage spooled then replayed, producers SIGKILLed mid-write... (CORE_TESTS below);
#   4. benchmarks/arm_log_cost.py: log()'s cost in the root, against the floor measured the
#      same way (emulated figures, reported, not judged).
#
#   bash .ci/arm_e2e.sh                     # as root; ARM_E2E_ARCHES="armhf" for one root
#
# The roots are cached in $ISSTREAMER_ARM_CACHE (default /var/cache/isstreamer-ci), with pip's
# cache (the wheels of the dependencies; cffi is compiled from source on armhf). A root is
# rebuilt when it is missing, unfinished or made by another recipe (ROOT_RECIPE). Building one
# is `debootstrap --foreign` (downloads and unpacks on the host) then `--second-stage` run
# inside it under qemu: several minutes each; a warm run only starts the roots.
#
# How ARM programs run here without changing the machine: every command in a root runs in new
# user, mount and PID namespaces (uids and gids 0-65535 mapped to themselves, so the root's files
# keep their owners) holding a *private* binfmt_misc instance (Linux >= 6.7) in which
# qemu-<arch>-static is registered; processes in the root can then exec each other (the sender is a subprocess,
# gcc runs cc1 and as). The registration, the /proc, /dev, /tmp and cache mounts all vanish with
# the namespaces: nothing global is mounted or registered, nothing needs undoing, and an
# interrupted run leaves nothing behind but an unfinished root, rebuilt next time. On a kernel
# without private instances (before 6.7) the global instance is used instead: this run mounts it
# if needed, registers its own entries and removes them (and the mount) when it exits.
#
# What qemu-user does not reproduce: ARM's weak memory ordering (guest loads and stores run
# with the host's x86-64 ordering). See README "Installing" for which tests cover ordering.
set -euo pipefail

# ------------------------------------------------------------------ inside the namespaces
# `arm_e2e.sh --inside <binfmt line|global> <root> <host dir to mount at /work> <cmd...>`: run
# by run_in_root below through unshare; sets up the root's mounts, then runs cmd chrooted.
if [ "${1:-}" = --inside ]; then
  reg=$2 root=$3 work=$4; shift 4
  # wait until the parent has written our uid/gid maps (until then we are "nobody")
  while [ -z "$(cat /proc/self/uid_map)" ] || [ -z "$(cat /proc/self/gid_map)" ]; do sleep 0.02; done
  mount -t proc proc /proc                      # this PID namespace's /proc
  if [ "$reg" != global ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc  # a private instance
    echo "$reg" >/proc/sys/fs/binfmt_misc/register # F: qemu is opened now, from the host's /usr/bin
  fi
  mount -t proc proc "$root/proc"
  # a /dev of its own: the host's character devices bound one by one (a bound /dev would let
  # the root's package scripts change the host's), a private devpts, /dev/shm a fresh tmpfs
  mount -t tmpfs -o mode=755,size=1m tmpfs "$root/dev"
  for d in null zero full random urandom tty console; do
    [ -e "/dev/$d" ] || continue
    touch "$root/dev/$d" && mount --bind "/dev/$d" "$root/dev/$d"
  done
  ln -s /proc/self/fd "$root/dev/fd"
  ln -s /proc/self/fd/0 "$root/dev/stdin"
  ln -s /proc/self/fd/1 "$root/dev/stdout"
  ln -s /proc/self/fd/2 "$root/dev/stderr"
  mkdir "$root/dev/pts" "$root/dev/shm"
  mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" && ln -s pts/ptmx "$root/dev/ptmx"
  mount -t tmpfs -o mode=1777,size=512m tmpfs "$root/dev/shm"   # the rings' directory
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"                 # a fresh /tmp each run
  mkdir -p "$root/root/.cache/pip" "$root/work"
  mount --bind "$ISSTREAMER_ARM_CACHE/pip" "$root/root/.cache/pip"
  mount --bind "$work" "$root/work"
  # a clean environment, but the host's pip index and timeout (PIP_CERT: see run_in_root)
  pip_env=()
  for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_DEFAULT_TIMEOUT; do
    [ -n "${!v:-}" ] && pip_env+=("$v=${!v}")
  done
  [ -s "$root/etc/ssl/certs/isstreamer-ci-host-ca.crt" ] &&
    pip_env+=(PIP_CERT=/etc/ssl/certs/isstreamer-ci-host-ca.crt)
  exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_PROGRESS_BAR=off PIP_NO_INPUT=1 "${pip_env[@]}" "$@"
fi

# ------------------------------------------------------------------ settings
cd "$(dirname "$0")/.."
REPO=$PWD
export ISSTREAMER_ARM_CACHE=${ISSTREAMER_ARM_CACHE:-/var/cache/isstreamer-ci}
ARCHES=${ARM_E2E_ARCHES:-arm64 armhf}
SUITE=${ARM_E2E_SUITE:-bookworm}
MIRROR=${ARM_E2E_MIRROR:-http://deb.debian.org/debian}
DEMO_EVENTS=${ARM_E2E_DEMO_EVENTS:-20000}
# the distribution's Python with venv and headers, a compiler, libffi's headers (cffi has no
# armv7 wheel on PyPI: pip compiles it)
PACKAGES=python3,python3-venv,python3-dev,gcc,libc6-dev,libffi-dev
# a root made by a different recipe is rebuilt (bump the last field to force a rebuild)
ROOT_RECIPE="$SUITE $MIRROR minbase $PACKAGES 1"
# Cases of the test suite run against the installed package: the process-model core of the fast
# run (the ring layout against the C structs, the backend, the README example, fork, spawn and
# forkserver pools and a fork pool with maxtasksperchild=1, SIGKILL of the producer into the
# collector and into the fault server, exit without close, the API down then up: the outage is
# spooled, then replayed), what is most ABI- and atomics-sensitive (owner locks, a full segment,
# records of every size wrapping around, a full ring, an orphaned ring adopted, the sender
# SIGKILLed mid-batch) and, from the slow run, producers SIGKILLed mid-write while a consumer
# drains (every published record whole, in order, exactly once).
CORE_TESTS=(
  "tests/test_process_model.py::test_layout_matches_the_c_structs"
  "tests/test_process_model.py::test_owner_lock_dies_with_the_process_and_is_not_inherited[native]"
  "tests/test_process_model.py::test_full_segment_drops_cost_a_put_and_are_counted[True]"
  "tests/test_streamer.py::test_backend_is_the_one_asked_for[native]"
  "tests/test_streamer.py::test_readme_example_verbatim[native]"
  "tests/test_streamer.py::test_pools_deliver_every_event[native-steady-fork]"
  "tests/test_streamer.py::test_pools_deliver_every_event[native-steady-spawn]"
  "tests/test_streamer.py::test_pools_deliver_every_event[native-steady-forkserver]"
  "tests/test_streamer.py::test_pools_deliver_every_event[native-maxtasksperchild1-fork]"
  "tests/test_streamer.py::test_sigkill_of_the_producer_loses_nothing[native]"
  "tests/test_streamer.py::test_exit_without_close_delivers_everything[native]"
  "tests/test_delivery.py::test_sigkill_producer[native]"
  "tests/test_delivery.py::test_sigkill_sender_mid_batch[native]"
  "tests/test_delivery.py::test_server_down_then_up"
  "tests/test_ring_stress.py::test_wraparound_with_every_record_size[native]"
  "tests/test_ring_stress.py::test_full_ring_drop_policy[native]"
  "tests/test_ring_stress.py::test_producers_killed_mid_write[native]"
  "tests/test_multiprocess.py::test_orphaned_ring_is_adopted_by_a_new_streamer[native]"
)
# ARM_E2E_TESTS="node ids": run those instead
if [ -n "${ARM_E2E_TESTS:-}" ]; then read -r -a CORE_TESTS <<<"$ARM_E2E_TESTS"; fi

# qemu-<arch>-static and the binfmt_misc magic of the arch's ELF binaries (as Debian's
# /usr/share/binfmts/qemu-*), registered with flags F (open qemu now) and P (keep argv[0])
declare -A QEMU=([arm64]=qemu-aarch64-static [armhf]=qemu-arm-static)
declare -A BINFMT=(
  [arm64]='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
  [armhf]='\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
)

fail() { echo "arm_e2e: FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || fail "run as root (debootstrap, namespaces with the roots' owners)"
for a in $ARCHES; do [ -n "${QEMU[$a]:-}" ] || fail "unknown arch $a (arm64, armhf)"; done
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v qemu-arm-static >/dev/null 2>&1 || need+=(qemu-user-static)
if [ "${#need[@]}" -gt 0 ]; then
  echo "== installing ${need[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi

mkdir -p "$ISSTREAMER_ARM_CACHE/pip" "$ISSTREAMER_ARM_CACHE/logs"
# one run at a time per cache (two CI runs on this machine would rebuild the same root)
exec 9>"$ISSTREAMER_ARM_CACHE/.lock"
flock 9
work=$(mktemp -d /tmp/isstreamer-arm-e2e.XXXXXX)

# binfmt_misc: a private instance in each run_in_root when this kernel offers one, else the
# global instance, with this run's entries (registered last, so they match first) removed at exit
global_entries=() global_mount=0
cleanup() {
  local e
  for e in "${global_entries[@]}"; do echo -1 >"/proc/sys/fs/binfmt_misc/$e" 2>/dev/null || true; done
  [ "$global_mount" = 0 ] || umount /proc/sys/fs/binfmt_misc 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
BINFMT_MODE=${ARM_E2E_BINFMT:-private}  # ARM_E2E_BINFMT=global: the fallback, on any kernel
if [ "$BINFMT_MODE" = global ] || ! unshare --user --map-root-user --mount \
    sh -c 'mount -t binfmt_misc none /proc/sys/fs/binfmt_misc' >/dev/null 2>&1; then
  BINFMT_MODE=global
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && global_mount=1
  fi
  for a in $ARCHES; do
    e="isstreamer-ci-$a-$$"
    echo ":$e:M::${BINFMT[$a]}:$(command -v "${QEMU[$a]}"):FP" >/proc/sys/fs/binfmt_misc/register
    global_entries+=("$e")
  done
fi
echo "== binfmt_misc: $BINFMT_MODE instance$([ "$BINFMT_MODE" = global ] && echo ", entries ${global_entries[*]} until this run exits")"

# run_in_root <arch> <root dir> <cmd...>: cmd in the root under qemu (see the header). The
# new user namespace gets the identity map of uids and gids 0-65535, written from here (only
# a process outside it may write a map of more than its own id).
run_in_root() {
  local arch=$1 root=$2; shift 2
  local reg=global
  [ "$BINFMT_MODE" = global ] || reg=":isstreamer-$arch:M::${BINFMT[$arch]}:$(command -v "${QEMU[$arch]}"):FP"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"  # pip and apt resolve names as the host does
  # pip in the root trusts what the host's pip trusts ($PIP_CERT, else the host's CA bundle):
  # a CI machine may reach PyPI through a proxy with its own certificate authority
  local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
  if [ -r "$ca" ] && [ -d "$root/etc/ssl/certs" ]; then
    cp -L "$ca" "$root/etc/ssl/certs/isstreamer-ci-host-ca.crt"
  fi
  unshare --user --mount --pid --fork --kill-child --propagation private \
    bash "$REPO/.ci/arm_e2e.sh" --inside "$reg" "$root" "$work" "$@" &
  local pid=$!
  # write the maps once unshare has entered its new user namespace
  while [ "$(readlink "/proc/$pid/ns/user" 2>/dev/null)" = "$(readlink /proc/self/ns/user)" ]; do sleep 0.01; done
  echo "0 0 65536" >"/proc/$pid/uid_map"
  echo "0 0 65536" >"/proc/$pid/gid_map"
  wait "$pid"
}

# ensure_root <arch>: the cached root of that arch, built (debootstrap) when missing or stale
ensure_root() {
  local arch=$1 root="$ISSTREAMER_ARM_CACHE/root-$arch"
  local log="$ISSTREAMER_ARM_CACHE/logs/debootstrap-$arch.log" t0=$SECONDS
  if [ "$(cat "$root/.isstreamer-ci-recipe" 2>/dev/null)" = "$ROOT_RECIPE" ]; then
    echo "   root $root: cached ($(cat "$root/.isstreamer-ci-built"))"
    return 0
  fi
  echo "   root $root: missing or stale, building ($SUITE, minbase + $PACKAGES; log: $log)"
  local new="$root.new"
  rm -rf "$new" "$root"
  # stage 1 on the host: resolve, download, unpack (no ARM code runs)
  if ! debootstrap --foreign --arch="$arch" --variant=minbase --include="$PACKAGES" \
      "$SUITE" "$new" "$MIRROR" >"$log" 2>&1; then
    tail -n 20 "$log"; fail "$arch: debootstrap --foreign"
  fi
  echo "   stage 1 (download, unpack on the host): $((SECONDS - t0)) s"
  local t1=$SECONDS
  # stage 2 in the root under qemu: configure every package. container=lxc: debootstrap then
  # does not insist on creating a device node in the root (mknod is refused in a user
  # namespace; /dev is provided, see --inside); its sysfs mount fails too: a warning, nothing
  # in the root needs /sys
  if ! run_in_root "$arch" "$new" env container=lxc /debootstrap/debootstrap --second-stage >>"$log" 2>&1; then
    tail -n 20 "$log"; fail "$arch: debootstrap --second-stage"
  fi
  run_in_root "$arch" "$new" apt-get clean >>"$log" 2>&1 || true
  echo "   stage 2 (configure under qemu): $((SECONDS - t1)) s"
  date -u '+built %Y-%m-%d %H:%M UTC' >"$new/.isstreamer-ci-built"
  echo "$ROOT_RECIPE" >"$new/.isstreamer-ci-recipe"  # written last: the root is complete
  mv "$new" "$root"
}

# ------------------------------------------------------------------ the sdist and the tests
echo "== the sdist of this checkout (python -m build --sdist on a pristine copy)"
PY=${PYTHON:-python3}
if ! "$PY" -m build --version >/dev/null 2>&1; then  # (CI's venv has it: .ci/wheels.sh)
  { "$PY" -m venv "$work/buildenv" && "$work/buildenv/bin/pip" install build; } >"$work/build.log" 2>&1 ||
    { tail -n 30 "$work/build.log"; fail "pip install build"; }
  PY="$work/buildenv/bin/python"
fi
mkdir -p "$work/pristine" "$work/dist" "$work/t"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/pristine"
(cd "$work/pristine" && "$PY" -m build --sdist -o "$work/dist" .) >>"$work/build.log" 2>&1 ||
  { tail -n 30 "$work/build.log"; fail "python -m build --sdist"; }
sdist=$(basename "$(ls "$work"/dist/isstreamer-*.tar.gz)")
echo "   $sdist"
# The tests and their pytest settings without the package: tests/conftest.py puts its parent
# directory first on sys.path, which must not hold an isstreamer/ (the installed one is tested)
cp -r "$work/pristine/tests" "$work/pristine/pyproject.toml" "$work/t/"
mkdir -p "$work/bench"
cp "$work"/pristine/benchmarks/{arm_log_cost,benchutil,countserver}.py "$work/bench/"
rm -rf "$work/pristine"

# The steps in a root (run as /work/in_root.sh there).
cat >"$work/in_root.sh" <<'EOF'
set -euo pipefail
arch=$1 sdist=$2 demo_events=$3; shift 3
step() { echo "-- [$arch] $1"; }
step "python: $(python3 -c 'import platform, sys; print(sys.version.split()[0], platform.machine(), "%d-bit" % (64 if sys.maxsize > 2**32 else 32))'), $(gcc --version | head -n 1)"
t0=$SECONDS
python3 -m venv /tmp/venv
. /tmp/venv/bin/activate
# the build requirements and the tests' from pip's cache; isstreamer's own wheel is never
# taken from it (removed before and after: each run compiles the extension anew)
find /root/.cache/pip/wheels -name 'isstreamer-*.whl' -delete 2>/dev/null || true
pip install -q pytest pytest-timeout
step "pip install /work/dist/$sdist"
pip install "/work/dist/$sdist" >/tmp/pip.log 2>&1 || { tail -n 40 /tmp/pip.log; exit 1; }
find /root/.cache/pip/wheels -name 'isstreamer-*.whl' -delete 2>/dev/null || true
grep -E "Building wheel for isstreamer|Created wheel for isstreamer|Successfully installed" /tmp/pip.log |
  sed -E 's/ sha256=[0-9a-f]+//; s/^ */   /'
if grep -q "C extension could not be built" /tmp/pip.log; then
  grep -m1 "C extension could not be built" /tmp/pip.log; exit 1
fi
step "installed in $((SECONDS - t0)) s; the extension and the backend"
cd /tmp  # not /work: nothing there may shadow the installed package
python - <<'PY'
import struct, sys
import isstreamer, isstreamer._native as n
from isstreamer import Streamer
with open(n.__file__, "rb") as f:
    head = f.read(20)
bits = {1: "32-bit", 2: "64-bit"}[head[4]]
machine = {40: "ARM", 183: "AArch64", 62: "x86-64"}.get(struct.unpack_from("<H", head, 18)[0], "?")
print("   %s: ELF %s %s" % (n.__file__, bits, machine))
s = Streamer(bucket_key="arm", access_key="k", api_base="http://127.0.0.1:9", spool_dir="/tmp/spool")
st = s.stats()
s.close(timeout=1)
print("   stats()['backend'] = %r (isstreamer %s)" % (st["backend"], isstreamer.__version__))
sys.exit(st["backend"] != "native")
PY
# without the extension, a weakly ordered CPU refuses the pure-Python fallback (isstreamer/ring/backend.py)
ISSTREAMER_NO_EXTENSION=1 python - <<'PY'
from isstreamer import Streamer
try:
    Streamer(bucket_key="arm", access_key="k", api_base="http://127.0.0.1:9", spool_dir="/tmp/spool")
except RuntimeError as exc:
    print("   without the extension: refused (%s...)" % str(exc)[:95])
else:
    raise SystemExit("the pure-Python fallback started on a weakly ordered CPU")
PY
step "isstreamer demo --exit --events $demo_events --workers 2"
t0=$SECONDS
isstreamer demo --exit --no-progress --events "$demo_events" --workers 2 >/tmp/demo.log 2>&1 ||
  { cat /tmp/demo.log; exit 1; }
sed 's/^/   /' /tmp/demo.log
# logged = delivered, checked on the demo's own summary lines
python - /tmp/demo.log <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def count(word):
    m = re.search(r"^\s*%s\s+([\d,]+)" % word, text, re.M)
    if not m:
        sys.exit("no '%s' line in the demo's output" % word)
    return int(m.group(1).replace(",", ""))
logged, delivered = count("logged"), count("delivered")
print("   demo: logged %d, delivered %d: %s" % (logged, delivered, "equal" if logged == delivered else "DIFFERENT"))
sys.exit(logged != delivered)
PY
step "demo took $((SECONDS - t0)) s; the core process-model cases (pytest)"
t0=$SECONDS
cd /work/t
# (-o addopts="": the project's '-m "not slow" --benchmark-skip' do not apply to named cases)
python -m pytest -p no:cacheprovider -o addopts="" -v -rfE --timeout 600 --durations=5 "$@" \
  >/tmp/pytest.log 2>&1 && rc=0 || rc=$?
grep -E "PASSED|FAILED|ERROR|passed|failed|s call " /tmp/pytest.log | sed -E 's/^(tests\/|[0-9.]+s call)/   \1/' || true
[ "$rc" = 0 ] || tail -n 60 /tmp/pytest.log
step "pytest took $((SECONDS - t0)) s (exit $rc)"
[ "$rc" = 0 ] || exit 1
step "benchmark: log() cost under qemu against the floor"
cd /tmp && python /work/bench/arm_log_cost.py --label "$arch under qemu-user: emulated" --json "/work/log-cost-$arch.json"
EOF

# ------------------------------------------------------------------ each root
status=0
for arch in $ARCHES; do
  echo "== $arch: Debian $SUITE root under ${QEMU[$arch]}"
  t0=$SECONDS
  ensure_root "$arch"
  if run_in_root "$arch" "$ISSTREAMER_ARM_CACHE/root-$arch" \
      bash /work/in_root.sh "$arch" "$sdist" "$DEMO_EVENTS" "${CORE_TESTS[@]}" 2>&1; then
    echo "   $arch: PASS ($((SECONDS - t0)) s)"
  else
    echo "   $arch: FAIL ($((SECONDS - t0)) s)"; status=1
  fi
done

# the same benchmark natively, for comparison with the emulated ratios (when this Python has
# the package: CI's venv)
echo "== log() cost on the host (native), for comparison"
host_py=$(command -v python || command -v python3)
if (cd /tmp && "$host_py" -c 'import isstreamer._native') >/dev/null 2>&1; then
  (cd /tmp && "$host_py" "$REPO/benchmarks/arm_log_cost.py" --label "$(uname -m), native") || status=1
else
  echo "   skipped: $host_py has no isstreamer with its extension"
fi
cp "$work"/log-cost-*.json "$ISSTREAMER_ARM_CACHE/logs/" 2>/dev/null || true

if [ "$status" = 0 ]; then echo "arm_e2e: PASS ($SECONDS s)"; else echo "arm_e2e: FAIL ($SECONDS s)"; fi
exit "$status"
