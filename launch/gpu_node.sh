#!/usr/bin/env bash
# `linearsr train` on GPU nodes, one process per node (JAX drives all local GPUs from one
# process). The step-by-step guide is docs/gpu.md. On one node:
#
#   launch/gpu_node.sh --config configs/sana600m_x4.py --workdir /shared/runs/sana600m \
#       --config.train.init_from=/shared/weights/sana600m \
#       --config.latent.dcae_params=/shared/weights/dcae \
#       --config.data.source.kind=folder --config.data.source.path=/shared/photos
#
# Across nodes, the same on every node with the same coordinator and its own rank
# (COORDINATOR=node0:12345 NUM_NODES=2 NODE_RANK=0 launch/gpu_node.sh ...); under SLURM,
# `srun launch/gpu_node.sh ...` with LINEARSR_DISTRIBUTED=auto lets JAX read the cluster from
# SLURM. .venv needs JAX's CUDA build (docs/gpu.md). XLA_PYTHON_CLIENT_MEM_FRACTION defaults to
# 0.9 here (JAX's own default is 0.75). DRY_RUN=1 prints the command and its environment.
set -euo pipefail
if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit $(( $# == 0 ? 2 : 0 ))
fi
BIN=${LINEARSR_BIN:-$(dirname "$0")/../.venv/bin/linearsr}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
if [[ -n "${COORDINATOR:-}" ]]; then
  export LINEARSR_COORDINATOR="$COORDINATOR" LINEARSR_NUM_PROCESSES="${NUM_NODES:?}" \
    LINEARSR_PROCESS_ID="${NODE_RANK:?}"
fi
if [[ -n "${DRY_RUN:-}" ]]; then
  env | grep -E '^(XLA_PYTHON_CLIENT_MEM_FRACTION|LINEARSR_[A-Z_]+)=' | sort
  printf '%q ' "$BIN" train "$@"; echo
  exit 0
fi
exec "$BIN" train "$@"
