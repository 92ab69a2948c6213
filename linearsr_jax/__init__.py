"""LinearSR in JAX/Flax: a linear-attention diffusion transformer for real-world SR."""

__version__ = "0.1.0"
