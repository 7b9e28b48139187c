"""A long Python job that heartbeats, reports progress, and cleans up when jobsup asks.

    jobsup run --ttl 2s --cleanup 1s -- python3 examples/python/long_job.py

Each job's payload is a number of steps of 100 ms. Past the ttl, jobsup's cleanup request
raises jr.Cleanup wherever the job is (here, inside time.sleep); the job removes its
scratch file and lets the exception go on, and the job is recorded `timeout` (exit 124).
Payload "spin" loops on the CPU, checking nothing, to show the same inside pure Python.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "runtimes", "python"))

import jobsup_runtime as jr  # noqa: E402


def handle(job):
    scratch = tempfile.NamedTemporaryFile(prefix=f"job-{job.id}-", delete=False)
    try:
        if job.payload == b"spin":
            while True:
                pass
        steps = int(job.payload or b"10")
        for step in range(steps):
            time.sleep(0.1)
            scratch.write(b".")
            job.progress(step + 1, steps)
        return f"{steps} steps"
    except jr.Cleanup:
        print(f"job {job.key}: asked to clean up; removing {scratch.name}", file=sys.stderr)
        raise
    finally:
        scratch.close()
        os.unlink(scratch.name)


jr.serve(handle)
