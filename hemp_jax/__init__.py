"""hemp_jax: HEMP (high-order entropy minimization) for neural network compression in JAX."""
