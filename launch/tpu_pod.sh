#!/usr/bin/env bash
# Cloud TPU pod: create the slice, copy the project to every worker, install, and train.
# The step-by-step guide is docs/tpu.md.
#
#   TPU_NAME=linearsr-v5e-32 ZONE=us-west4-a ACCELERATOR=v5litepod-32 launch/tpu_pod.sh create
#   TPU_NAME=linearsr-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh setup
#   TPU_NAME=linearsr-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh train \
#       --config configs/sana600m_x4.py --workdir gs://BUCKET/runs/sana600m \
#       --config.train.init_from=gs://BUCKET/weights/sana600m \
#       --config.latent.dcae_params=gs://BUCKET/weights/dcae \
#       --config.data.source.kind=folder --config.data.source.path=gs://BUCKET/photos
#   TPU_NAME=linearsr-v5e-32 ZONE=us-west4-a launch/tpu_pod.sh delete
#
# create: RUNTIME defaults to the TPU software version of ACCELERATOR's generation (v4, v5e /
# v5litepod, v5p, v6e); another generation needs RUNTIME. setup: every worker needs Python 3.11
# (PYTHON names another interpreter); a worker without it stops setup with the line to install it.
# train: every worker runs the same command (`--worker=all`) and JAX discovers the pod
# (LINEARSR_DISTRIBUTED=auto); weights, data and the workdir are gs:// URLs that every host
# reads with the TPU VM's service account. DRY_RUN=1 prints the gcloud commands instead.
set -euo pipefail
usage="usage: TPU_NAME=... ZONE=... $0 create|setup|train|delete [linearsr-train-args...]"
if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  echo "$usage"
  exit $(( $# == 0 ? 2 : 0 ))
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CMD=$1
shift
PYTHON=${PYTHON:-python3.11}

run() {  # the command, or with DRY_RUN=1 the command as a shell would read it
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }

runtime_for() {  # Cloud TPU software version for JAX, by generation (cloud.google.com/tpu/docs/runtimes)
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "no default runtime for ACCELERATOR=$1: set RUNTIME (see docs/tpu.md)" >&2; return 2 ;;
  esac
}

case "$CMD" in
  create)
    accelerator=${ACCELERATOR:?set ACCELERATOR, e.g. v5litepod-32, v5p-128, v6e-64, v4-32}
    runtime=${RUNTIME:-$(runtime_for "$accelerator")}
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$accelerator" --version "$runtime"
    ;;
  setup)
    cd "$(dirname "$0")/.."  # the checkout this script is in
    tar czf /tmp/linearsr_src.tgz --exclude .venv --exclude runs --exclude .git .
    run gcloud compute tpus tpu-vm scp /tmp/linearsr_src.tgz "$TPU_NAME":~/ --zone "$ZONE" \
      --worker=all
    # As `make install` does, less the test and GPU-compile sets; requirements-nodeps.txt holds
    # the DISTS weights the default eval metrics read.
    ssh_all "set -e; command -v $PYTHON >/dev/null || { echo \"\$(hostname): no $PYTHON; \
install it: sudo apt-get update && sudo apt-get install -y python3.11 python3.11-venv\" >&2; \
exit 3; }; mkdir -p linearsr && tar xzf linearsr_src.tgz -C linearsr && cd linearsr && \
$PYTHON -m venv .venv && .venv/bin/pip install -q --upgrade pip && \
.venv/bin/pip install -q -r requirements.txt 'jax[tpu]==0.10.2' && \
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt && \
.venv/bin/pip install -q --no-deps -e ."
    ;;
  train)
    # %q: each argument reaches the workers' shell as one word, as it was given here.
    ssh_all "cd linearsr && LINEARSR_DISTRIBUTED=auto .venv/bin/linearsr train $(printf '%q ' "$@")"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
    ;;
  *) echo "unknown command $CMD; $usage" >&2; exit 2 ;;
esac
