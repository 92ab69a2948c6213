"""What the SANA-based configs share: LinearSR at ×4 in the DC-AE f32c32 latent space.

LR 128 px -> HR 512 px -> latent 16×16 (the paper's training and test resolution); the LR stem
needs log2(32 / 4) = 3 stride-2 convs to reach the latent grid. Where each number comes from:

- paper: 512 px HR crops, noise-source flow, 4 SNR experts after pre-training, ESGF (knee at
  48k steps, collapse past 200k), ~20 sampler steps;
- SANA's released 512 px training config (Sana_600M_img512.yaml): learning rate 1e-4, no
  weight decay, 2000 warmup steps, gradient clipping at 0.1, logit-normal(0, 1) training
  times with flow shift 3, timesteps ×1000, Gemma-2 text tokens (2304 wide). SANA uses the
  CAME optimizer; AdamW stands in here (`optimizer.name=adafactor` is the factored,
  lower-memory alternative);
- our reasoning, for a pod: the rest, said where it is set.
"""

from linearsr_jax.configs.base import get_base_config, model_config, stage_config
from linearsr_jax.configs import dcae_f32c32_sana


def sana_x4_config(**model_fields):
  config = get_base_config()
  config.model = model_config(caption_channels=2304, latent_channels=32, lr_channels=32,
                              lr_stem_convs=3, lr_stem_width=128, remat="full", dtype="bfloat16",
                              depthwise="grouped", **model_fields)
  # One grouped convolution for the Mix-FFN's depthwise conv: on v5e-16 (sana600m, batch 1568)
  # 12 % fewer bytes a step and 2.8 GiB less memory per chip than nine shifts, the same float32
  # sum (docs/results.md, "Where the bytes go").
  config.latent.kind = "dcae"
  config.latent.dcae = dcae_f32c32_sana.get_config()
  # config.latent.dcae_params: the dir `linearsr import diffusers-vae` wrote (required).
  config.data.crop_size = 512
  # 256 px HR validation crops fit the demo's held-out photos (300 and 400 px high); with a
  # real validation set (data.eval_source) use 512, the paper's test size.
  config.data.eval.crop_size = 256
  # Global batch. 4 experts split it into 4 equal parts, each over the batch shards: a multiple
  # of 4 × chips keeps every chip busy (64 fills a v5e-16; raise it on larger pods).
  config.data.batch_size = 64
  config.data.num_workers = 8  # Real-ESRGAN degradations of 512 px crops are CPU-heavy
  # SANA's caption path is trained on Gemma-2 token states: feed it those (tags.encoder docs).
  config.tags.encoder = "precomputed"
  config.tags.max_tokens = 64  # a tag list ("dog, grass, frisbee, ...") under Gemma's tokenizer
  config.diffusion.source = "noise"
  config.diffusion.timestep_scale = 1000.0
  config.diffusion.train_shift = 3.0
  config.diffusion.sampler.shift = 3.0
  config.optimizer.learning_rate = 1e-4
  config.optimizer.weight_decay = 0.0
  config.optimizer.warmup_steps = 2000
  config.optimizer.grad_clip = 0.1
  # ESGF cadence: the paper's knee came at 48k steps; an evaluation every 2k gives ~24 points
  # before it, and patience 4 confirms it within 8k steps after.
  config.train.eval_every = 2000
  config.train.eval_steps = 20
  config.train.log_every = 100
  config.esgf.patience = 4
  config.stages.pretrain = stage_config(1, 250_000)  # ESGF should end it near 50k
  config.stages.moe = stage_config(4, 100_000)
  config.stages.finetune = stage_config(4, 50_000, learning_rate=2e-5)
  # The 4 experts each on their own quarter of the chips, FSDP within it: every chip gathers
  # and reduces one expert's weights, not all four (a quarter of the collectives; README, pod
  # table). Needs a multiple of 4 devices: `--config.mesh.expert=1` on fewer.
  config.mesh.expert = 4
  config.mesh.fsdp = -1
  config.mesh.data = 1
  return config
