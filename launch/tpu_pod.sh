#!/usr/bin/env bash
# Cloud TPU pod: create the slice, copy the project to every worker, install, and train.
#
#   TPU_NAME=linearsr-v5e-32 ZONE=us-west4-a ACCELERATOR=v5litepod-32 \
#     launch/tpu_pod.sh create
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh setup
#   TPU_NAME=... ZONE=... launch/tpu_pod.sh train --config configs/sana600m_x4.py \
#       --workdir gs://BUCKET/runs/sana600m
#
# Every worker runs the same command (`--worker=all`); JAX discovers the pod itself
# (LINEARSR_DISTRIBUTED=auto). The workdir is a gs:// URL that every host reads and writes
# with the TPU VM's service account (application-default credentials); a directory every
# host sees (NFS) works too.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
CMD=${1:?usage: $0 create|setup|train|delete [linearsr-train-args...]}
shift || true
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"; }
case "$CMD" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "${ACCELERATOR:?set ACCELERATOR}" --version "${RUNTIME:-v2-alpha-tpuv5-lite}"
    ;;
  setup)
    tar czf /tmp/linearsr_src.tgz --exclude .venv --exclude runs --exclude .git .
    gcloud compute tpus tpu-vm scp /tmp/linearsr_src.tgz "$TPU_NAME":~/ --zone "$ZONE" --worker=all
    ssh_all "mkdir -p linearsr && tar xzf linearsr_src.tgz -C linearsr && cd linearsr && \
      python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
      'jax[tpu]==0.10.2' && .venv/bin/pip install -q --no-deps -e ."
    ;;
  train)
    ssh_all "cd linearsr && LINEARSR_DISTRIBUTED=auto .venv/bin/linearsr train $*"
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
    ;;
  *) echo "unknown command $CMD" >&2; exit 2 ;;
esac
