"""`linearsr export --layout diffusers SRC --out DIR`: params -> a layout PyTorch tools load."""

from linearsr_jax.interop import params_io
from linearsr_jax.models.dit import DiTConfig


def add_arguments(parser):
  parser.add_argument("src", help="params directory (from `linearsr import` or training)")
  parser.add_argument("--layout", choices=["diffusers"], default="diffusers",
                      help="diffusers: save_pretrained directory of SanaTransformer2DModel")
  parser.add_argument("--out", required=True, help="directory to create")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args) -> int:
  from linearsr_jax.interop.diffusers_sana import export_transformer
  config, params = params_io.load_params_dir(args.src, "dit")
  cfg = DiTConfig.from_dict(config)
  export_transformer(cfg, params, args.out, overwrite=args.overwrite)
  print(f"exported to {args.out}")
  return 0
