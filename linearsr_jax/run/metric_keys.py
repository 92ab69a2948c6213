"""The names validation logs its curves under, which ESGF, the best-checkpoint rule and the
config checks refer to (kept free of JAX, like the esgf package that reads them)."""

METRIC_NAMES = ("psnr_y", "ssim_y", "lpips_alex")


def metric_key(name: str, prefix: str = "") -> str:
  """Where a score is logged: 'val/psnr_y', or with prefix 'bicubic_' its bicubic baseline."""
  return f"val/{prefix}{name}"


# What every evaluation returns: the keys ESGF and the best checkpoint can follow (the bicubic
# baselines are logged beside them but never change).
METRIC_KEYS = tuple(metric_key(name) for name in METRIC_NAMES)


def flow_loss_key(expert: int) -> str:
  """Where expert `expert`'s validation flow loss is logged (ExpertFlowLosses)."""
  return f"val/flow_loss_expert{expert}"


def logged_keys(num_experts: int) -> tuple:
  """Every curve an evaluation of a stage with `num_experts` experts logs."""
  return METRIC_KEYS + tuple(flow_loss_key(e) for e in range(num_experts))
