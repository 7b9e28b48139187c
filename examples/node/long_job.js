'use strict';
// A long Node job that reports progress and cleans up when jobsup asks.
//
//   jobsup run --ttl 2s --cleanup 1s -- node examples/node/long_job.js
//
// Each job's payload is a number of steps of 100 ms. Past the ttl, jobsup's cleanup request
// aborts job.signal: the pending timer rejects, the job removes its scratch file, and the
// job is recorded `timeout` (exit 124). Payload "spin" loops on the CPU without yielding,
// so the abort never runs and jobsup kills the worker at the end of the cleanup window.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { setTimeout: sleep } = require('node:timers/promises');
const { serve } = require('../../runtimes/node');

serve(async (job) => {
  if (job.payload.toString() === 'spin') for (;;);
  const scratch = path.join(os.tmpdir(), `job-${job.id}-${process.pid}`);
  fs.writeFileSync(scratch, '');
  try {
    const steps = Number(job.payload.toString() || '10');
    for (let step = 0; step < steps; step++) {
      await sleep(100, undefined, { signal: job.signal });
      fs.appendFileSync(scratch, '.');
      job.progress(step + 1, steps);
    }
    return `${steps} steps`;
  } finally {
    if (job.signal.aborted) console.error(`job ${job.key}: asked to clean up; removing ${scratch}`);
    fs.rmSync(scratch, { force: true });
  }
});
