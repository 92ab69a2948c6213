#!/usr/bin/env bash
# N CPU processes on this machine, one JAX process each, gloo collectives between them.
# Every process sees its share of the devices; the global mesh spans all of them.
#
#   launch/local_multiprocess.sh 2 --config configs/tiny.py --workdir runs/mp
#
# Logs: LOGDIR/process_<i>.log, LOGDIR=${LINEARSR_LOG_DIR:-WORKDIR}; a gs:// workdir needs
# LINEARSR_LOG_DIR (a shell cannot append to an object). Exit code: non-zero if any process failed.
set -euo pipefail
if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# == 0 ? 2 : 0 ))
fi
NUM=$1
[[ "$NUM" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 NUM_PROCESSES linearsr-train-args..." >&2; exit 2; }
shift
WORKDIR=""
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--workdir" ]]; then j=$((i + 1)); WORKDIR="${!j}"; fi
  if [[ "${!i}" == --workdir=* ]]; then WORKDIR="${!i#--workdir=}"; fi
done
: "${WORKDIR:?pass --workdir}"
LOGDIR=${LINEARSR_LOG_DIR:-$WORKDIR}
if [[ "$LOGDIR" == *://* ]]; then
  echo "the workdir $WORKDIR is a URL: set LINEARSR_LOG_DIR to a local folder for the logs" >&2
  exit 2
fi
mkdir -p "$LOGDIR"
BIN=${LINEARSR_BIN:-$(dirname "$0")/../.venv/bin/linearsr}
# A port the system says is free now (a random one once collided: "Failed to start RPC server").
PY="$(dirname "$BIN")/python"
[[ -x "$PY" ]] || PY=python3
PORT=${LINEARSR_PORT:-$("$PY" -c \
  'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
pids=()
for ((p = 0; p < NUM; p++)); do
  JAX_PLATFORMS=cpu LINEARSR_COORDINATOR="localhost:$PORT" LINEARSR_NUM_PROCESSES="$NUM" \
    LINEARSR_PROCESS_ID="$p" "$BIN" train "$@" >"$LOGDIR/process_$p.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
[[ $status -eq 0 ]] || echo "a process failed; see $LOGDIR/process_*.log" >&2
exit $status
