"""Benchmarks: each compares two ways side by side in one run and records the ratio.

`python -m bench` (or `make bench`) runs them all, writes bench/results/NAME.json and
regenerates docs/benchmarks.md from every result file.
"""
