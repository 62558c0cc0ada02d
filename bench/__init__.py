"""Benchmarks: one command each (``python -m bench.<name>``), each printing a table with a peer
measured in the same run (docs/performance.md records the figures)."""
