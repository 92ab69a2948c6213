"""linearsr_jax.train."""
