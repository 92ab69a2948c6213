"""linearsr_jax.diffusion."""
