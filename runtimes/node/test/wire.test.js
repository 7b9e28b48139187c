'use strict';
// The codec against the golden frames every implementation checks (protocol/golden).
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const wire = require('../wire.js');
const runtime = require('..');

const golden = JSON.parse(
  fs.readFileSync(path.join(__dirname, '..', '..', '..', 'protocol', 'golden', 'frames.json'), 'utf8'),
);

const U32_FIELDS = new Set(['attempt', 'min_version', 'max_version', 'pid']);
const U64_FIELDS = new Set(['id', 'ttl_ms', 'job', 'grace_ms', 'done', 'total']);
const BYTE_FIELDS = new Set(['payload', 'ok']);

// A golden message in the codec's decoded shape: u64 as BigInt, u32 as number, bytes as Buffer.
function message(described) {
  const msg = {};
  for (const [key, value] of Object.entries(described)) {
    if (value === null) msg[key] = null;
    else if (U64_FIELDS.has(key)) msg[key] = BigInt(value);
    else if (U32_FIELDS.has(key)) msg[key] = Number(value);
    else if (BYTE_FIELDS.has(key)) msg[key] = Buffer.from(value, 'hex');
    else msg[key] = value;
  }
  return msg;
}

const variants = (entry) => (entry.direction === 'to_worker' ? wire.TO_WORKER : wire.FROM_WORKER);

function decodeFrame(entry) {
  const d = new wire.Deframer();
  d.feed(Buffer.from(entry.frame, 'hex'));
  const body = d.nextBody();
  if (body === null) throw new wire.ProtocolError('no whole frame');
  if (d.pending()) throw new wire.ProtocolError('bytes after the frame');
  return wire.decode(body, variants(entry));
}

test('the golden file is for the versions this runtime speaks', () => {
  assert.equal(golden.protocol_version, runtime.MAX_VERSION);
  assert.equal(runtime.MIN_VERSION, runtime.MAX_VERSION);
});

test('every golden message encodes to its exact bytes and back', () => {
  for (const entry of golden.valid) {
    const msg = message(entry.message);
    assert.equal(wire.encode(msg, variants(entry)).toString('hex'), entry.frame, entry.name);
    assert.deepEqual(decodeFrame(entry), msg, entry.name);
  }
});

test('longer integer forms are read', () => {
  for (const entry of golden.decode_only) {
    const msg = message(entry.message);
    assert.notEqual(wire.encode(msg, variants(entry)).toString('hex'), entry.frame, entry.name);
    assert.deepEqual(decodeFrame(entry), msg, entry.name);
  }
});

test('malformed frames are refused', () => {
  for (const entry of golden.invalid) {
    assert.throws(() => decodeFrame(entry), wire.ProtocolError, entry.name);
  }
});

test('frames split anywhere come out whole', () => {
  const small = golden.valid.filter((e) => e.direction === 'to_worker' && e.frame.length < 2000);
  const stream = Buffer.concat(small.map((e) => Buffer.from(e.frame, 'hex')));
  const want = small.map((e) => message(e.message));
  for (const step of [1, 3, 7, 64]) {
    const d = new wire.Deframer();
    const got = [];
    for (let i = 0; i < stream.length; i += step) {
      d.feed(stream.subarray(i, i + step));
      for (let body; (body = d.nextBody()) !== null;) got.push(wire.decode(body, wire.TO_WORKER));
    }
    assert.deepEqual(got, want, `chunks of ${step}`);
    assert.equal(d.pending(), 0);
  }
});

test('numbers as well as BigInts encode, and out-of-range values do not', () => {
  assert.equal(
    wire.encode({ type: 'Heartbeat', job: 7 }).toString('hex'),
    wire.encode({ type: 'Heartbeat', job: 7n }).toString('hex'),
  );
  assert.throws(() => wire.encode({ type: 'Heartbeat', job: 2n ** 64n }), wire.ProtocolError);
  assert.throws(() => wire.encode({ type: 'Heartbeat', job: -1 }), wire.ProtocolError);
  assert.throws(() => wire.encode({ type: 'Heartbeat', job: 1.5 }), wire.ProtocolError);
  assert.throws(() => wire.encode({ type: 'Done', job: 1, ok: Buffer.alloc(100) }, wire.FROM_WORKER, 50), wire.ProtocolError);
});

test('the ESM entry point exports the same runtime', async () => {
  const esm = await import('../index.mjs');
  assert.equal(esm.serve, runtime.serve);
  assert.equal(esm.wire, runtime.wire);
});
