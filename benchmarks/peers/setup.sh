#!/usr/bin/env bash
# Create (or reuse) the peers' virtual environment: ISStreamer 2.0.0 and influxdb-client.
#
# They live apart from isstreamer because ISStreamer's import name ("ISStreamer") is also the
# name of isstreamer's compatibility package. Idempotent: a venv that already has the pinned
# versions is left alone. Usage: bash benchmarks/peers/setup.sh [VENV_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${1:-$HERE/../.peers-venv}"
PY="${PYTHON:-python3}"
ISSTREAMER_VERSION="2.0.0"
INFLUX_VERSION="1.50.0"

check() {
  [ -x "$VENV/bin/python" ] && (cd / && "$VENV/bin/python" - "$ISSTREAMER_VERSION" "$INFLUX_VERSION" <<'PY'
import sys
from importlib.metadata import version
want_is, want_influx = sys.argv[1], sys.argv[2]
ok = version("ISStreamer") == want_is and version("influxdb-client") == want_influx
import ISStreamer.Streamer, influxdb_client  # noqa: F401  (importable, not shadowed)
sys.exit(0 if ok else 1)
PY
  ) >/dev/null 2>&1
}

if check; then
  echo "peers venv ready: $VENV"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "ISStreamer==$ISSTREAMER_VERSION" "influxdb-client==$INFLUX_VERSION"
check || { echo "peers venv at $VENV is not usable" >&2; exit 1; }
echo "peers venv ready: $VENV"
