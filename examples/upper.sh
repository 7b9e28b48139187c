#!/bin/sh
# A line processor for `jobsup run --mode lines`: upper-cases each job.
#
#     jobsup run --mode lines -- sh "$PWD"/examples/upper.sh < jobs.txt
#
# One job is one line on stdin; its result is the next line on stdout. Each command that
# writes a result must finish (or flush) before the next line is read: `printf` and a
# short pipeline like the one below do; a long-lived filter that buffers would not.
# At the ttl jobsup sends SIGTERM to the whole process group: the trap cleans up and exits,
# and the job is recorded `timeout` rather than `killed`.
scratch=$(mktemp)
trap 'rm -f "$scratch"; echo "upper.sh: asked to clean up; exiting" >&2; exit 0' TERM
while IFS= read -r line; do
  printf '%s\n' "$line" > "$scratch"
  tr '[:lower:]' '[:upper:]' < "$scratch"
done
rm -f "$scratch"
