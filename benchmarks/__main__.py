"""``python -m benchmarks``: run every variant and print Markdown tables."""

from benchmarks.run import main

raise SystemExit(main())
