"""`python -m benchmarks` / `make bench`: see benchmarks/runner.py and docs/performance.md."""

from benchmarks.runner import main

raise SystemExit(main())
