"""The server plugin as a process, as SPIRE runs it: `python -m tests.bench.procbench`."""
