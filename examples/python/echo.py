"""A native jobsup processor in Python: answers each job with its payload.

    jobsup run -- python3 examples/python/echo.py < jobs.txt

Finds jobsup_runtime next to this repository's runtimes/python when it is not installed
(`pip install ./runtimes/python`).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "runtimes", "python"))

import jobsup_runtime as jr  # noqa: E402


def handle(job):
    if job.payload.startswith(b"fail:"):
        # An exception fails the job with its message.
        raise ValueError(job.payload[5:].decode())
    return job.payload


jr.serve(handle)
