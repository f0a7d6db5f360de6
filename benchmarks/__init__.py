"""In-process benchmarks for axess (targets: book, Internals).

Run ``python -m benchmarks`` (see ``benchmarks/README.md``).
"""
