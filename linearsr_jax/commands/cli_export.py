"""`linearsr export SRC --out DIR`: params -> layouts that other tools load.

SRC is a params directory (from `linearsr import`) or a training run / stage dir / checkpoint
step dir (`--stage`, `--step`, `--raw`, `--expert N|all`; default: the last stage's knee, EMA,
all experts).

`--layout diffusers`: one `SanaTransformer2DModel.save_pretrained` directory per expert, DIR/
for one expert, DIR/expert_<i>/ for several. diffusers has no slot for the LR stem nor for the
tag encoder: both go to `linearsr_extra.safetensors` beside the weights (names `lr_stem/...`,
`tag_encoder/...`), and `linearsr_export.json` records the expert, its t interval and the
tags config. `linearsr import diffusers DIR[/expert_<i>]` reads the DiT part back.

`--layout npz`: DIR/params.npz, one array per leaf named by its '/'-joined path
(`dit/blocks_0/attn1/to_q/kernel`, `tag_encoder/embedding`, ...; `dit/...` only for a params
directory), each with the experts on its leading axis (length 1 for one expert), and
DIR/config.json: {"source", "experts": exported indices, "intervals": their t ranges,
"model": the DiT config, "tags", "config": the run's full config or null}. `read_npz_export`
loads it back.
"""

import dataclasses
import io
import json

import numpy as np

from linearsr_jax import params_io, storage
from linearsr_jax.errors import UserError

NPZ_FILE = "params.npz"
CONFIG_FILE = "config.json"
INFO_FILE = "linearsr_export.json"


def add_arguments(parser):
  parser.add_argument("src", help="params directory, training run, stage dir or checkpoint step")
  parser.add_argument(
      "--layout", choices=["diffusers", "npz"], default="diffusers",
      help="diffusers: SanaTransformer2DModel save_pretrained dir per expert; "
      "npz: one flat .npz with '/'-joined names plus config.json")
  parser.add_argument("--out", required=True, help="directory to create")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  run_group = parser.add_argument_group("training run sources")
  run_group.add_argument("--stage", help="stage of the run (default: the last one)")
  run_group.add_argument("--step", type=int, help="checkpoint step (default: the stage's knee)")
  run_group.add_argument("--raw", action="store_true", help="raw params instead of the EMA")
  run_group.add_argument("--expert", default="all", help="expert index, or 'all' (default)")


@dataclasses.dataclass
class Export:
  """What to write: params with experts on the leading axis, and their description."""
  dit_config: object  # DiTConfig
  params: dict  # {"dit": ..., ["tag_encoder": ...]}, leaves [E, ...]
  experts: list  # original expert indices of the leading axis
  intervals: list  # [t_lo, t_hi] of each exported expert
  tags: dict | None
  run_config: dict | None
  source: str


def _select_experts(spec: str, count: int) -> list:
  if spec == "all":
    return list(range(count))
  try:
    index = int(spec)
  except ValueError:
    raise UserError(f"--expert must be an index or 'all', got {spec!r}") from None
  if not 0 <= index < count:
    raise UserError(f"--expert {index}: the checkpoint has {count} expert(s) (0..{count - 1})")
  return [index]


def load_export(args) -> Export:
  from linearsr_jax.models.dit import DiTConfig
  src = storage.path(args.src)
  if not src.is_dir():
    raise UserError(f"{src}: not a linearsr params directory or training run")
  if (src / params_io.HEADER_FILE).exists():
    config, params = params_io.load_params_dir(src, "dit")
    _select_experts(args.expert, 1)
    return Export(DiTConfig.from_dict(config), {"dit": _take_experts(params, None)}, [0],
                  [[0.0, 1.0]], None, None, str(src))

  from linearsr_jax.diffusion import experts
  from linearsr_jax.inference.trained import load_trained
  trained = load_trained(src, args.stage, args.step, ema=not args.raw)
  chosen = _select_experts(args.expert, trained.num_experts)
  lo, hi = experts.expert_intervals(
      experts.boundaries_from_config(trained.diffusion.experts, trained.num_experts))
  return Export(trained.model.dit, _take_experts(trained.params, chosen), chosen,
                [[float(lo[i]), float(hi[i])] for i in chosen],
                dataclasses.asdict(trained.model.tags), trained.config.to_dict(),
                f"{src} ({trained.stage} step {trained.step}, {'raw' if args.raw else 'EMA'})")


def _take_experts(params, indices):
  """Host copies of the chosen experts' leaves ([E', ...]); None adds an axis of one."""
  import jax
  return jax.tree.map(lambda leaf: np.asarray(leaf)[indices], params)


def _info(export: Export, position: int) -> str:
  return json.dumps(
      {
          "source": export.source, "expert": export.experts[position],
          "interval": export.intervals[position], "tags": export.tags
      }, indent=2) + "\n"


def write_diffusers(export: Export, out, overwrite: bool):
  import jax
  from linearsr_jax.atomic import atomic_dir
  from linearsr_jax.interop.diffusers_sana import export_transformer

  def write(position, target, replace):
    one = jax.tree.map(lambda leaf: leaf[position], export.params)
    extra = {k: v for k, v in one.items() if k != "dit"}
    export_transformer(export.dit_config, one["dit"], target, overwrite=replace, extra_params=extra,
                       extra_files={INFO_FILE: _info(export, position)})

  if len(export.experts) == 1:
    write(0, out, overwrite)
    return
  with atomic_dir(out, overwrite=overwrite) as tmp:
    for position, index in enumerate(export.experts):
      write(position, tmp / f"expert_{index}", False)


def write_npz(export: Export, out, overwrite: bool):
  from linearsr_jax.atomic import atomic_dir
  with atomic_dir(out, overwrite=overwrite) as tmp:
    np.savez(tmp / NPZ_FILE, **params_io.flatten(export.params))
    (tmp / CONFIG_FILE).write_text(
        json.dumps(
            {
                "source": export.source, "experts": export.experts, "intervals": export.intervals,
                "model": dataclasses.asdict(export.dit_config
                                           ), "tags": export.tags, "config": export.run_config
            }, indent=2) + "\n")


def read_npz_export(path) -> tuple[dict, dict]:
  """(config.json contents, params tree with experts on the leading axis) of an npz export."""
  from linearsr_jax.atomic import check_complete
  path = storage.path(path)
  check_complete(path)
  config = json.loads((path / CONFIG_FILE).read_text())
  with np.load(io.BytesIO((path / NPZ_FILE).read_bytes())) as arrays:
    return config, params_io.unflatten({k: arrays[k] for k in arrays.files})


def run(args) -> int:
  export = load_export(args)
  out = storage.path(args.out)
  (write_npz if args.layout == "npz" else write_diffusers)(export, out, args.overwrite)
  experts = ", ".join(map(str, export.experts))
  print(f"exported expert(s) {experts} of {export.source} as {args.layout} to {out}")
  return 0
