"""linearsr_jax.inference."""
