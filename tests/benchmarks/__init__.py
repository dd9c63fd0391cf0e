"""Tests of the benchmark scripts in scripts/ (tiny models, a few steps)."""
