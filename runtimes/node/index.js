'use strict';
// Write a jobsup native processor in Node, without dependencies:
//
//   const { serve } = require('.../runtimes/node');
//   serve(async (job) => {   // job.payload (Buffer), job.id, job.key, job.attempt, job.kind
//     job.heartbeat();        // moves the idle timeout
//     job.progress(0.5);      // a fraction, or job.progress(3, 10) in units
//     // job.signal: an AbortSignal, aborted when jobsup asks the job to clean up
//     return 'result';        // string or Buffer -> ok; a throw or rejection -> failed
//   });
//
// After the abort, once the handler settles, the runtime acknowledges the request and the
// process exits 124. A handler that never yields to the event loop (a synchronous CPU
// loop) never sees the abort: jobsup's kill at the end of the cleanup window ends it.
//
// Requests are read from fd 3 by the event loop; frames to jobsup are written to fd 4 with
// synchronous writes, so a frame is on its way before the handler's next line runs and
// nothing is left in a buffer when the process exits. The wire format is PROTOCOL.md's.

const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const wire = require('./wire.js');

const MIN_VERSION = 2;
const MAX_VERSION = 2;
const JOB_FD = 3;
const RESULT_FD = 4;
// Exit codes, as the Rust runtime's: 124 after a cleanup (GNU timeout's), 2 when not run
// by jobsup, 3 when the link to jobsup broke.
const EXIT_CLEANED_UP = 124;
const EXIT_NOT_STARTED = 2;
const EXIT_BROKEN = 3;

function say(text) {
  try {
    fs.writeSync(2, `jobsup-runtime: ${text}\n`);
  } catch {
    // stderr is gone: nothing else to tell it with.
  }
}

// A u64 from the wire as users want it: a number while it is exact, else a BigInt.
function id(n) {
  return n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

class Job {
  constructor(msg, runtime, signal) {
    /** jobsup's number for this hand-off, unique within a run (what frames name). */
    this.id = id(msg.id);
    /** The job's id as the user gave it (ndjson `id`, else its line number). */
    this.key = msg.key;
    /** The job's input. */
    this.payload = msg.payload;
    /** Which attempt this is, from 1. */
    this.attempt = msg.attempt;
    /** The job's kind (ndjson `kind`), or null. */
    this.kind = msg.kind;
    /** Milliseconds before the cleanup request (0: no deadline). */
    this.ttlMs = id(msg.ttl_ms);
    /** Aborted when jobsup asks the job to clean up. */
    this.signal = signal;
    Object.defineProperty(this, '_wireId', { value: msg.id });
    Object.defineProperty(this, '_runtime', { value: runtime });
  }

  /** Tells jobsup the job is alive: moves its idle timeout. */
  heartbeat() {
    this._runtime.send({ type: 'Heartbeat', job: this._wireId });
  }

  /**
   * Reports progress (also a heartbeat): `progress(0.5)` is a fraction (sent as 500 of
   * 1000), `progress(3, 10)` units done of a total (`total` null when unknown).
   */
  progress(done, total = null, message = null) {
    if (total == null && typeof done === 'number' && !Number.isInteger(done)) {
      if (!(done >= 0 && done <= 1)) throw new RangeError(`a progress fraction is between 0 and 1, not ${done}`);
      done = Math.round(done * 1000);
      total = 1000;
    }
    this._runtime.send({ type: 'Progress', job: this._wireId, done, total, message });
  }
}

class Runtime {
  constructor(maxFrame) {
    this.maxFrame = maxFrame;
    this.deframer = new wire.Deframer(maxFrame);
    this.busy = null; // { job, controller }
    this.cleanupWanted = false;
    this.draining = false;
  }

  send(msg) {
    const frame = wire.encode(msg, wire.FROM_WORKER, this.maxFrame);
    let off = 0;
    while (off < frame.length) {
      try {
        off += fs.writeSync(RESULT_FD, frame, off);
      } catch (e) {
        if (e.code === 'EAGAIN') {
          // A non-blocking pipe that is full: jobsup drains it; wait a moment.
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
          continue;
        }
        say(`cannot write to jobsup on fd ${RESULT_FD}: ${e.message}`);
        process.exit(EXIT_BROKEN);
      }
    }
  }

  exit(code) {
    process.exit(code);
  }

  broken(why) {
    say(why);
    this.exit(EXIT_BROKEN);
  }

  onData(chunk, handler) {
    this.deframer.feed(chunk);
    for (;;) {
      let msg;
      try {
        const body = this.deframer.nextBody();
        if (body === null) return;
        msg = wire.decode(body, wire.TO_WORKER);
      } catch (e) {
        this.broken(`cannot read a request from jobsup on fd ${JOB_FD}: ${e.message}`);
        return;
      }
      this.onRequest(msg, handler);
    }
  }

  onRequest(msg, handler) {
    switch (msg.type) {
      case 'Job':
        if (this.busy) {
          this.broken(`jobsup sent job ${msg.id} while job ${this.busy.job.id} was still running`);
        } else if (this.draining) {
          this.broken(`jobsup sent job ${msg.id} after asking the worker to shut down`);
        } else {
          this.start(msg, handler);
        }
        break;
      case 'Cleanup':
        if (this.busy) {
          // One for an earlier job (it ended as the request crossed) still means jobsup
          // is done with this worker; cleaning up the current one is right.
          this.cleanUp();
        } else {
          // Idle: nothing to clean up, but jobsup has given up on this worker all the same.
          this.send({ type: 'CleanupDone', job: msg.job });
          this.exit(EXIT_CLEANED_UP);
        }
        break;
      case 'Shutdown':
        this.drain();
        break;
      default:
        this.broken(`unexpected request ${msg.type}`);
    }
  }

  drain() {
    if (this.busy) this.draining = true;
    else this.exit(0);
  }

  cleanUp() {
    if (this.cleanupWanted) return;
    this.cleanupWanted = true;
    this.busy.controller.abort(new Error(`jobsup asked job ${this.busy.job.id} to clean up`));
  }

  start(msg, handler) {
    const controller = new AbortController();
    const job = new Job(msg, this, controller.signal);
    this.busy = { job, controller };
    let run;
    try {
      run = Promise.resolve(handler(job));
    } catch (e) {
      run = Promise.reject(e);
    }
    run.then(
      (value) => this.finish(job, result(value)),
      (err) => {
        // A rejection after the abort is the job's way out, not a failure to report.
        if (this.cleanupWanted) return this.finish(job, null);
        if (err && err.stack) say(`job ${job.id} failed: ${err.stack}`);
        return this.finish(job, { failed: message(err) });
      },
    );
  }

  finish(job, outcome) {
    this.busy = null;
    if (outcome) {
      // After a cleanup request the result is still sent: jobsup keeps a result that
      // arrives in the cleanup window in the record.
      this.send({ type: 'Done', job: job._wireId, ...outcome });
    }
    if (this.cleanupWanted) {
      this.send({ type: 'CleanupDone', job: job._wireId });
      this.exit(EXIT_CLEANED_UP);
    } else if (this.draining) {
      this.exit(0);
    }
  }
}

function result(value) {
  if (value === undefined || value === null) return { ok: Buffer.alloc(0) };
  if (typeof value === 'string') return { ok: Buffer.from(value, 'utf8') };
  if (value instanceof Uint8Array) return { ok: value };
  return { failed: `the handler returned ${typeof value}; a result is a string, a Buffer or nothing` };
}

function message(err) {
  if (err instanceof Error) return err.message || err.name;
  return String(err);
}

function connect() {
  const program = process.argv[1] ? path.relative(process.cwd(), process.argv[1]) || process.argv[1] : '<program>';
  const refuse = (why) => {
    say(`${program}: this is a jobsup processor; it serves jobs sent by jobsup and cannot be run on its own (${why})\nrun it as: jobsup run -- node ${program}`);
    process.exit(EXIT_NOT_STARTED);
  };
  const version = process.env.JOBSUP_PROTOCOL;
  if (version === undefined) refuse('JOBSUP_PROTOCOL is not set');
  for (const fd of [JOB_FD, RESULT_FD]) {
    try {
      fs.fstatSync(fd);
    } catch {
      refuse(`JOBSUP_PROTOCOL is set but fd ${fd} is not open`);
    }
  }
  // The variable is jobsup's highest version; the hello tells it our range, and jobsup
  // refuses us if its lowest is above our highest.
  const theirs = /^\s*\d+\s*$/.test(version) ? Number(version) : -1;
  if (theirs < MIN_VERSION) {
    say(`${program}: protocol version mismatch: jobsup speaks versions up to ${JSON.stringify(version)}, this processor (jobsup-runtime for Node) needs version ${MIN_VERSION} or later`);
    process.exit(EXIT_NOT_STARTED);
  }
  let maxFrame = wire.DEFAULT_MAX_FRAME;
  if (process.env.JOBSUP_MAX_FRAME !== undefined) {
    maxFrame = /^\s*\d+\s*$/.test(process.env.JOBSUP_MAX_FRAME) ? Number(process.env.JOBSUP_MAX_FRAME) : 0;
    if (!(maxFrame > 0 && maxFrame <= wire.U32_MAX)) {
      say(`${program}: JOBSUP_MAX_FRAME=${JSON.stringify(process.env.JOBSUP_MAX_FRAME)} is not a frame size in bytes`);
      process.exit(EXIT_NOT_STARTED);
    }
  }
  return maxFrame;
}

let served = false;

/** Serves jobs from jobsup with `handler(job)` (sync or async) until jobsup says stop. */
function serve(handler) {
  if (typeof handler !== 'function') throw new TypeError('serve(handler): handler is a function');
  if (served) throw new Error('serve() was already called: the protocol pipes have one owner');
  served = true;
  const runtime = new Runtime(connect());
  // SIGTERM is a cleanup request for the running job (and an exit when idle), not an
  // instant death.
  process.on('SIGTERM', () => (runtime.busy ? runtime.cleanUp() : runtime.exit(0)));
  runtime.send({ type: 'Hello', min_version: MIN_VERSION, max_version: MAX_VERSION, pid: process.pid });
  // Programs the handler starts with child_process do not inherit fds 3 and 4 (libuv's
  // spawn passes only the stdio it is given), so no grandchild can hold the pipes open.
  const input = new net.Socket({ fd: JOB_FD, readable: true, writable: false });
  input.on('data', (chunk) => runtime.onData(chunk, handler));
  input.on('end', () => {
    if (runtime.deframer.pending()) runtime.broken(`fd ${JOB_FD} ended inside a frame`);
    // End of file on fd 3 is a shutdown: finish the job, then exit.
    runtime.drain();
  });
  input.on('error', (e) => runtime.broken(`cannot read from jobsup on fd ${JOB_FD}: ${e.message}`));
}

module.exports = { serve, Job, wire, MIN_VERSION, MAX_VERSION, ProtocolError: wire.ProtocolError };
