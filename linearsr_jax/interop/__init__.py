"""linearsr_jax.interop."""
