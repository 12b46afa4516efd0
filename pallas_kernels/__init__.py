"""Pallas kernels for the hot paths, each beside a plain-jnp reference."""
