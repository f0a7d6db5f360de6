"""In-process benchmarks for axess (DESIGN §14-15).

Run ``python -m benchmarks`` (see ``benchmarks/README.md``).
"""
