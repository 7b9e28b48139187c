#!/usr/bin/env node
// A line processor for `jobsup run --mode lines`: upper-cases each job.
//
//     jobsup run --mode lines -- node "$PWD"/examples/upper.js < jobs.txt
//
// One job is one line on stdin; its result is the next line on stdout. Node writes to a
// pipe asynchronously but in order, so one `write` per result is enough; do not print
// anything else on stdout (use stderr for logs). At the ttl jobsup sends SIGTERM: clean up
// and exit, and the job is recorded `timeout` rather than `killed`.
const readline = require("node:readline");

process.on("SIGTERM", () => {
  process.stderr.write("upper.js: asked to clean up; exiting\n");
  process.exit(0);
});

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  process.stdout.write(line.toUpperCase() + "\n");
});
