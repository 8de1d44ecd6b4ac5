"""Structure-aware fuzzing of every parser that reads untrusted input (README: Fuzzing).

targets.py  the targets and what each may raise; mutators.py  the format-level mutators;
seeds.py  the corpus seeds; __main__.py  `make fuzz` (atheris); test_fuzz.py  the short
run in `make test`.
"""
