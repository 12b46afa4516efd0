"""efficient: a JAX/Flax framework for efficient deep-learning methods."""
