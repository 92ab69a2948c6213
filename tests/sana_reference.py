"""Random diffusers SANA transformers and their outputs: the independent reference for parity."""

import numpy as np
import torch
from diffusers import SanaTransformer2DModel


def random_sana(seed=0, **config) -> SanaTransformer2DModel:
  """A small diffusers SANA with every parameter perturbed away from its init.

  Default inits leave norms at 1 and some biases at 0; perturbing them makes a wrong mapping of
  any tensor visible in the output.
  """
  torch.manual_seed(seed)
  model = SanaTransformer2DModel(**config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model


def reference_inputs(seed, batch, latent_hw, in_channels, cond_len, caption_channels):
  """NumPy NHWC inputs (x, t, cond, mask) with a partial caption mask in the first sample."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, *latent_hw, in_channels)).astype(np.float32)
  t = rng.uniform(0, 1000, (batch,)).astype(np.float32)
  cond = rng.standard_normal((batch, cond_len, caption_channels)).astype(np.float32)
  mask = np.ones((batch, cond_len), bool)
  mask[0, cond_len // 2:] = False
  return x, t, cond, mask


def torch_forward(model, x, t, cond, mask) -> np.ndarray:
  """diffusers forward on NHWC NumPy inputs, returning NHWC."""
  with torch.no_grad():
    out = model(
        torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(cond), torch.from_numpy(t),
        encoder_attention_mask=torch.from_numpy(mask.astype(np.float32)), return_dict=False)[0]
  return out.permute(0, 2, 3, 1).numpy()
