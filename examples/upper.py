#!/usr/bin/env python3
"""A line processor for `jobsup run --mode lines`: upper-cases each job.

    jobsup run --mode lines -- python3 -u "$PWD"/examples/upper.py < jobs.txt

One job is one line on stdin; its result is the next line on stdout. Flush after every
line (or run python3 -u): a result sitting in a buffer never reaches jobsup, and the job
times out. At the ttl jobsup sends SIGTERM (see --cleanup-signal): clean up and exit, and
the job is recorded `timeout` rather than `killed`. Logs go to stderr, never stdout.
"""
import signal
import sys


def on_term(signum, frame):
    print("upper.py: asked to clean up; exiting", file=sys.stderr, flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)

for line in sys.stdin:
    sys.stdout.write(line.rstrip("\n").upper() + "\n")
    sys.stdout.flush()
