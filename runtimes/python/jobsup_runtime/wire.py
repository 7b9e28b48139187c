"""The jobsup wire format (PROTOCOL.md): frames, and the messages inside them.

A frame is a 4-byte little-endian body length, then the body. A body is one message in
bincode 1.3's varint encoding: the variant's index as a varint, then its fields in order.
Integers are varints (below 251: one byte; else a marker byte 251/252/253 and a 2/4/8-byte
little-endian number); byte strings and text are a varint length then the bytes; an
optional value is a byte 0 (absent) or 1 followed by the value.

Messages are plain dicts with a "type" key, the same shape as the golden vectors in
protocol/golden/frames.json (with ints and bytes instead of strings of digits and hex).
"""

import struct

__all__ = [
    "DEFAULT_MAX_FRAME",
    "HEADER_LEN",
    "ProtocolError",
    "encode",
    "decode",
    "Deframer",
    "TO_WORKER",
    "FROM_WORKER",
]

HEADER_LEN = 4
DEFAULT_MAX_FRAME = 64 * 1024 * 1024

U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class ProtocolError(Exception):
    """Bytes that are not a valid frame, or a message that cannot be encoded."""


# Each direction's variants, in their wire order (the index is the variant's number), with
# their fields in wire order. Field kinds: u32, u64, bytes, str, opt_u64, opt_str, result.
TO_WORKER = (
    ("Job", (("id", "u64"), ("key", "str"), ("payload", "bytes"), ("attempt", "u32"),
             ("ttl_ms", "u64"), ("kind", "opt_str"))),
    ("Cleanup", (("job", "u64"), ("grace_ms", "u64"))),
    ("Shutdown", ()),
)
FROM_WORKER = (
    ("Hello", (("min_version", "u32"), ("max_version", "u32"), ("pid", "u32"))),
    ("Heartbeat", (("job", "u64"),)),
    ("Progress", (("job", "u64"), ("done", "u64"), ("total", "opt_u64"),
                  ("message", "opt_str"))),
    ("Done", (("job", "u64"), ("result", "result"))),
    ("CleanupDone", (("job", "u64"),)),
)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def varint(n):
    """The shortest varint for an unsigned integer below 2**64."""
    if n < 0 or n > U64_MAX:
        raise ProtocolError(f"integer {n} does not fit in 64 unsigned bits")
    if n <= 250:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfb" + _U16.pack(n)
    if n <= U32_MAX:
        return b"\xfc" + _U32.pack(n)
    return b"\xfd" + _U64.pack(n)


def _u32(n):
    if not isinstance(n, int) or n < 0 or n > U32_MAX:
        raise ProtocolError(f"{n!r} is not a 32-bit unsigned integer")
    return varint(n)


def _u64(n):
    if not isinstance(n, int) or n < 0 or n > U64_MAX:
        raise ProtocolError(f"{n!r} is not a 64-bit unsigned integer")
    return varint(n)


def _bytes(b):
    return varint(len(b)) + bytes(b)


def _str(s):
    return _bytes(s.encode("utf-8"))


def _field(kind, value, out):
    if kind == "u64":
        out.append(_u64(value))
    elif kind == "u32":
        out.append(_u32(value))
    elif kind == "bytes":
        out.append(_bytes(value))
    elif kind == "str":
        out.append(_str(value))
    elif kind == "opt_u64":
        out.append(b"\x00" if value is None else b"\x01" + _u64(value))
    elif kind == "opt_str":
        out.append(b"\x00" if value is None else b"\x01" + _str(value))
    else:
        raise AssertionError(kind)


def encode(msg, variants=FROM_WORKER, max_frame=DEFAULT_MAX_FRAME):
    """One whole frame (header included) holding `msg`."""
    for index, (name, fields) in enumerate(variants):
        if name == msg["type"]:
            break
    else:
        raise ProtocolError(f"no message {msg['type']!r} in this direction")
    out = [varint(index)]
    for fname, kind in fields:
        if kind == "result":
            # JobResult: variant 0 Ok(bytes), variant 1 Failed(text).
            if "ok" in msg:
                out.append(b"\x00" + _bytes(msg["ok"]))
            else:
                out.append(b"\x01" + _str(msg["failed"]))
        else:
            _field(kind, msg[fname], out)
    body = b"".join(out)
    if len(body) > max_frame:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_frame} bytes")
    return _U32.pack(len(body)) + body


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError(f"body ends inside a field ({len(self.data)} bytes)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self):
        if self.pos >= len(self.data):
            raise ProtocolError(f"body ends inside a field ({len(self.data)} bytes)")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self):
        b = self.byte()
        if b <= 250:
            return b
        # Longer forms than needed are accepted, as bincode does.
        if b == 251:
            return _U16.unpack(self.take(2))[0]
        if b == 252:
            return _U32.unpack(self.take(4))[0]
        if b == 253:
            return _U64.unpack(self.take(8))[0]
        raise ProtocolError(f"invalid integer marker {b}")

    def u32(self):
        n = self.varint()
        if n > U32_MAX:
            raise ProtocolError(f"integer {n} does not fit in 32 bits")
        return n

    def blob(self):
        n = self.varint()
        if n > len(self.data) - self.pos:
            raise ProtocolError(f"a length of {n} runs past the end of the body")
        return bytes(self.take(n))

    def text(self):
        try:
            return self.blob().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"text is not UTF-8: {e}") from None

    def tag(self):
        t = self.byte()
        if t > 1:
            raise ProtocolError(f"invalid option tag {t}")
        return t == 1


def decode(body, variants=TO_WORKER):
    """The message in one frame body (header already removed)."""
    r = _Reader(body)
    index = r.u32()
    if index >= len(variants):
        raise ProtocolError(f"unknown message number {index}")
    name, fields = variants[index]
    msg = {"type": name}
    for fname, kind in fields:
        if kind == "u64":
            msg[fname] = r.varint()
        elif kind == "u32":
            msg[fname] = r.u32()
        elif kind == "bytes":
            msg[fname] = r.blob()
        elif kind == "str":
            msg[fname] = r.text()
        elif kind == "opt_u64":
            msg[fname] = r.varint() if r.tag() else None
        elif kind == "opt_str":
            msg[fname] = r.text() if r.tag() else None
        elif kind == "result":
            which = r.u32()
            if which == 0:
                msg["ok"] = r.blob()
            elif which == 1:
                msg["failed"] = r.text()
            else:
                raise ProtocolError(f"unknown result number {which}")
    if r.pos != len(body):
        raise ProtocolError(f"{len(body) - r.pos} bytes left over after a {name}")
    return msg


class Deframer:
    """Cuts a byte stream into frame bodies; keeps partial frames between calls."""

    def __init__(self, max_frame=DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data

    def next_body(self):
        """The next whole body, or None if more bytes are needed."""
        buf = self.buf
        if len(buf) < HEADER_LEN:
            return None
        n = _U32.unpack_from(buf)[0]
        if n > self.max_frame:
            # Refused before the body is buffered: a hostile length costs nothing.
            raise ProtocolError(
                f"frame of {n} bytes exceeds the limit of {self.max_frame} bytes")
        end = HEADER_LEN + n
        if len(buf) < end:
            return None
        body = bytes(buf[HEADER_LEN:end])
        del buf[:end]
        return body

    def pending(self):
        """Bytes of an unfinished frame (nonzero at end of stream means truncation)."""
        return len(self.buf)
