"""Benchmarks: each compares Cipherline with a limit measured in the same run."""
