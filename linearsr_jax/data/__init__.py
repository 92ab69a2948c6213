"""linearsr_jax.data."""
