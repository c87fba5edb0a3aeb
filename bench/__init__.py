"""Benchmarks of the platform; ``python -m bench`` runs them all, results in docs/performance.md."""
