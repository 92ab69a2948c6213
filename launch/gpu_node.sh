#!/usr/bin/env bash
# One process per GPU node (JAX drives all local GPUs from one process). On one node just run
# `linearsr train`; across nodes run this on every node with the same coordinator:
#
#   COORDINATOR=node0:12345 NUM_NODES=2 NODE_RANK=0 launch/gpu_node.sh \
#       --config configs/sana600m_x4.py --workdir /shared/runs/sana600m
#
# Under SLURM, `srun launch/gpu_node.sh ...` with LINEARSR_DISTRIBUTED=auto lets JAX read
# the cluster from SLURM instead. Install jax with CUDA first: pip install "jax[cuda12]==0.10.2".
set -euo pipefail
BIN=${LINEARSR_BIN:-$(dirname "$0")/../.venv/bin/linearsr}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
if [[ -n "${COORDINATOR:-}" ]]; then
  export LINEARSR_COORDINATOR="$COORDINATOR" LINEARSR_NUM_PROCESSES="${NUM_NODES:?}" \
    LINEARSR_PROCESS_ID="${NODE_RANK:?}"
fi
exec "$BIN" train "$@"
