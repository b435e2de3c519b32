"""Benchmarks (the `bench` extra): synthetic gallery generator and the cascade benchmark."""
