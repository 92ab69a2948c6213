"""linearsr_jax.models."""
