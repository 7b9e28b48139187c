'use strict';
// A native jobsup processor in Node: answers each job with its payload.
//
//   jobsup run -- node examples/node/echo.js < jobs.txt
const { serve } = require('../../runtimes/node');

serve(async (job) => {
  const text = job.payload.toString();
  // A throw (or a rejected promise) fails the job with its message.
  if (text.startsWith('fail:')) throw new Error(text.slice(5));
  return job.payload;
});
