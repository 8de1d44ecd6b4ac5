"""Benchmarks that print figures: `make bench` / `python -m tests.bench [name ...]`.

Speed and memory are measured here, never asserted in tests. Every module named
`bench_<name>.py` in this package is one section: it has a docstring whose first line
describes it and a `run()` that returns the `measure.Table`s to print (it may print
progress to stderr, and raises `measure.Skipped` when the machine lacks what it needs).
The runner imports and runs the sections in name order, or only those named on the
command line.
"""
