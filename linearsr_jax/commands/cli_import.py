"""`linearsr import {diffusers,diffusers-vae} SRC --out DIR`: PyTorch-ecosystem weights -> a
params dir."""

import dataclasses

from linearsr_jax import params_io


def add_arguments(parser):
  parser.add_argument("kind", choices=["diffusers", "diffusers-vae"],
                      help="diffusers: SanaTransformer2DModel; diffusers-vae: AutoencoderDC")
  parser.add_argument("src", help="save_pretrained directory or .safetensors file")
  parser.add_argument("--out", required=True, help="params directory to create")
  parser.add_argument("--config_json", help="config.json for a lone .safetensors file")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  sr = parser.add_argument_group("SR conversion of a text-to-image transformer")
  sr.add_argument("--lr_channels", type=int, help="LR feature channels to add (zero-initialised)")
  sr.add_argument("--lr_stem_convs", type=int, help="stride-2 convs in the LR stem")
  sr.add_argument("--lr_stem_width", type=int, help="width of the LR stem")
  sr.add_argument("--no_scan", action="store_true", help="unrolled blocks instead of nn.scan")
  sr.add_argument("--seed", type=int, default=0, help="seed of the fresh LR stem")


def run(args) -> int:
  if args.kind == "diffusers":
    from linearsr_jax.interop.diffusers_sana import import_transformer
    overrides = {
        k: getattr(args, k)
        for k in ("lr_channels", "lr_stem_convs", "lr_stem_width")
        if getattr(args, k) is not None
    }
    if args.no_scan:
      overrides["scan_layers"] = False
    cfg, params = import_transformer(args.src, args.config_json, seed=args.seed, **overrides)
    params_io.save_params_dir(args.out, "dit", dataclasses.asdict(cfg), params, args.overwrite)
    print(f"imported a {cfg.depth}-block, width-{cfg.hidden} transformer into {args.out}")
  else:
    from linearsr_jax.interop.diffusers_vae import import_autoencoder_dc
    from linearsr_jax.models.autoencoder import PARAMS_KIND
    config, params = import_autoencoder_dc(args.src, args.config_json)
    params_io.save_params_dir(args.out, PARAMS_KIND, config, params, args.overwrite)
    print(f"imported an AutoencoderDC into {args.out}")
  return 0
