"""Benchmarks behind `streamd bench ...`: each compares like with like in one run and prints one JSON object."""
