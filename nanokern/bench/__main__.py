"""`python -m nanokern.bench _worker SPEC` runs one measured approach; anything else is the CLI."""

import sys

from nanokern.bench.cli import bench
from nanokern.bench.measure import _worker_main

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        _worker_main(sys.argv[2])
    else:
        bench(prog_name="nanokern bench")
