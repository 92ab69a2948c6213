"""linearsr_jax.evaluate."""
