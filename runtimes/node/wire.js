'use strict';
// The jobsup wire format (PROTOCOL.md): frames, and the messages inside them.
//
// A frame is a 4-byte little-endian body length, then the body: one message in bincode
// 1.3's varint encoding, the variant's index as a varint and then its fields in order.
// Integers are varints (below 251: one byte; else a marker byte 251/252/253 and a 2/4/8-byte
// little-endian number); byte strings and text are a varint length then the bytes; an
// optional value is a byte 0 (absent) or 1 followed by the value.
//
// Messages are plain objects with a `type`, shaped like the golden vectors in
// protocol/golden/frames.json. u64 fields decode to BigInt (they may pass 2^53); u32 fields
// to numbers; encoding takes either.

const HEADER_LEN = 4;
const DEFAULT_MAX_FRAME = 64 * 1024 * 1024;
const U32_MAX = 0xffffffff;
const U64_MAX = 0xffffffffffffffffn;

class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ProtocolError';
  }
}

// Each direction's variants in wire order (the index is the variant's number), with their
// fields in wire order.
const TO_WORKER = [
  ['Job', [['id', 'u64'], ['key', 'str'], ['payload', 'bytes'], ['attempt', 'u32'],
    ['ttl_ms', 'u64'], ['kind', 'opt_str']]],
  ['Cleanup', [['job', 'u64'], ['grace_ms', 'u64']]],
  ['Shutdown', []],
];
const FROM_WORKER = [
  ['Hello', [['min_version', 'u32'], ['max_version', 'u32'], ['pid', 'u32']]],
  ['Heartbeat', [['job', 'u64']]],
  ['Progress', [['job', 'u64'], ['done', 'u64'], ['total', 'opt_u64'], ['message', 'opt_str']]],
  ['Done', [['job', 'u64'], ['result', 'result']]],
  ['CleanupDone', [['job', 'u64']]],
];

function varint(value, max) {
  let n;
  try {
    n = BigInt(value);
  } catch {
    throw new ProtocolError(`${value} is not an integer`);
  }
  if (n < 0n || n > max) throw new ProtocolError(`${value} does not fit the field (0..${max})`);
  if (n <= 250n) return Buffer.of(Number(n));
  if (n <= 0xffffn) {
    const b = Buffer.alloc(3);
    b[0] = 251;
    b.writeUInt16LE(Number(n), 1);
    return b;
  }
  if (n <= 0xffffffffn) {
    const b = Buffer.alloc(5);
    b[0] = 252;
    b.writeUInt32LE(Number(n), 1);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = 253;
  b.writeBigUInt64LE(n, 1);
  return b;
}

function blob(bytes) {
  return [varint(bytes.length, U64_MAX), bytes];
}

function toBytes(value) {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new ProtocolError(`expected bytes, got ${typeof value}`);
}

/** One whole frame (header included) holding `msg`. */
function encode(msg, variants = FROM_WORKER, maxFrame = DEFAULT_MAX_FRAME) {
  const index = variants.findIndex(([name]) => name === msg.type);
  if (index < 0) throw new ProtocolError(`no message ${msg.type} in this direction`);
  const parts = [varint(index, BigInt(U32_MAX))];
  for (const [field, kind] of variants[index][1]) {
    const v = msg[field];
    switch (kind) {
      case 'u64': parts.push(varint(v, U64_MAX)); break;
      case 'u32': parts.push(varint(v, BigInt(U32_MAX))); break;
      case 'bytes': parts.push(...blob(toBytes(v))); break;
      case 'str': parts.push(...blob(Buffer.from(v, 'utf8'))); break;
      case 'opt_u64':
        parts.push(v == null ? Buffer.of(0) : Buffer.concat([Buffer.of(1), varint(v, U64_MAX)]));
        break;
      case 'opt_str':
        if (v == null) parts.push(Buffer.of(0));
        else parts.push(Buffer.of(1), ...blob(Buffer.from(v, 'utf8')));
        break;
      case 'result':
        // JobResult: variant 0 Ok(bytes), variant 1 Failed(text).
        if (msg.ok !== undefined) parts.push(Buffer.of(0), ...blob(toBytes(msg.ok)));
        else parts.push(Buffer.of(1), ...blob(Buffer.from(String(msg.failed), 'utf8')));
        break;
      default: throw new Error(`unknown field kind ${kind}`);
    }
  }
  const bodyLen = parts.reduce((n, p) => n + p.length, 0);
  if (bodyLen > maxFrame) {
    throw new ProtocolError(`frame of ${bodyLen} bytes exceeds the limit of ${maxFrame} bytes`);
  }
  const header = Buffer.alloc(HEADER_LEN);
  header.writeUInt32LE(bodyLen, 0);
  return Buffer.concat([header, ...parts], HEADER_LEN + bodyLen);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Reader {
  constructor(body) {
    this.body = body;
    this.pos = 0;
  }

  need(n) {
    if (this.pos + n > this.body.length) {
      throw new ProtocolError(`body ends inside a field (${this.body.length} bytes)`);
    }
  }

  byte() {
    this.need(1);
    return this.body[this.pos++];
  }

  // Longer forms than needed are accepted, as bincode does.
  varint() {
    const b = this.byte();
    if (b <= 250) return BigInt(b);
    let n;
    if (b === 251) {
      this.need(2);
      n = BigInt(this.body.readUInt16LE(this.pos));
      this.pos += 2;
    } else if (b === 252) {
      this.need(4);
      n = BigInt(this.body.readUInt32LE(this.pos));
      this.pos += 4;
    } else if (b === 253) {
      this.need(8);
      n = this.body.readBigUInt64LE(this.pos);
      this.pos += 8;
    } else {
      throw new ProtocolError(`invalid integer marker ${b}`);
    }
    return n;
  }

  u32() {
    const n = this.varint();
    if (n > BigInt(U32_MAX)) throw new ProtocolError(`integer ${n} does not fit in 32 bits`);
    return Number(n);
  }

  blob() {
    const n = this.varint();
    if (n > BigInt(this.body.length - this.pos)) {
      throw new ProtocolError(`a length of ${n} runs past the end of the body`);
    }
    const out = this.body.subarray(this.pos, this.pos + Number(n));
    this.pos += Number(n);
    return Buffer.from(out);
  }

  text() {
    try {
      return utf8.decode(this.blob());
    } catch (e) {
      if (e instanceof ProtocolError) throw e;
      throw new ProtocolError('text is not UTF-8');
    }
  }

  tag() {
    const t = this.byte();
    if (t > 1) throw new ProtocolError(`invalid option tag ${t}`);
    return t === 1;
  }
}

/** The message in one frame body (header already removed). */
function decode(body, variants = TO_WORKER) {
  const r = new Reader(body);
  const index = r.u32();
  if (index >= variants.length) throw new ProtocolError(`unknown message number ${index}`);
  const [name, fields] = variants[index];
  const msg = { type: name };
  for (const [field, kind] of fields) {
    switch (kind) {
      case 'u64': msg[field] = r.varint(); break;
      case 'u32': msg[field] = r.u32(); break;
      case 'bytes': msg[field] = r.blob(); break;
      case 'str': msg[field] = r.text(); break;
      case 'opt_u64': msg[field] = r.tag() ? r.varint() : null; break;
      case 'opt_str': msg[field] = r.tag() ? r.text() : null; break;
      case 'result': {
        const which = r.u32();
        if (which === 0) msg.ok = r.blob();
        else if (which === 1) msg.failed = r.text();
        else throw new ProtocolError(`unknown result number ${which}`);
        break;
      }
      default: throw new Error(`unknown field kind ${kind}`);
    }
  }
  if (r.pos !== body.length) {
    throw new ProtocolError(`${body.length - r.pos} bytes left over after a ${name}`);
  }
  return msg;
}

/** Cuts a byte stream into frame bodies; keeps partial frames between calls. */
class Deframer {
  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
    this.chunks = [];
    this.length = 0;
  }

  feed(chunk) {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The next whole body, or null if more bytes are needed. */
  nextBody() {
    if (this.length < HEADER_LEN) return null;
    if (this.chunks[0].length < HEADER_LEN) this.flatten();
    const n = this.chunks[0].readUInt32LE(0);
    if (n > this.maxFrame) {
      // Refused before the body is buffered: a hostile length costs nothing.
      throw new ProtocolError(`frame of ${n} bytes exceeds the limit of ${this.maxFrame} bytes`);
    }
    const end = HEADER_LEN + n;
    if (this.length < end) return null;
    if (this.chunks[0].length < end) this.flatten();
    const first = this.chunks[0];
    const body = first.subarray(HEADER_LEN, end);
    if (first.length === end) this.chunks.shift();
    else this.chunks[0] = first.subarray(end);
    this.length -= end;
    return body;
  }

  flatten() {
    this.chunks = [Buffer.concat(this.chunks, this.length)];
  }

  /** Bytes of an unfinished frame (nonzero at end of stream means truncation). */
  pending() {
    return this.length;
  }
}

module.exports = {
  HEADER_LEN,
  DEFAULT_MAX_FRAME,
  U32_MAX,
  U64_MAX,
  ProtocolError,
  TO_WORKER,
  FROM_WORKER,
  encode,
  decode,
  Deframer,
};
