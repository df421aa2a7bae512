"""Modules of benches/bench.py, the hyperfill benchmark."""
