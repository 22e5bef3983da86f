"""Test-only CPU patches for megatron-core (its literal CUDA calls), shared by the tests and the
benchmarks that run megatron-core without a GPU. Never imported by the package."""
