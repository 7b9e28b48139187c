"""The codec against the golden frames every implementation checks (protocol/golden)."""

import json
import os
import unittest

from jobsup_runtime import wire

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                      "protocol", "golden", "frames.json")

INTS = {"id", "attempt", "ttl_ms", "job", "grace_ms", "min_version", "max_version", "pid",
        "done", "total"}
BYTES = {"payload", "ok"}


def message(described):
    """A golden message in the codec's shape: ints as ints, byte fields as bytes."""
    msg = {}
    for key, value in described.items():
        if value is not None and key in INTS:
            value = int(value)
        elif key in BYTES:
            value = bytes.fromhex(value)
        msg[key] = value
    return msg


def variants(entry):
    return wire.TO_WORKER if entry["direction"] == "to_worker" else wire.FROM_WORKER


def decode_frame(entry):
    deframer = wire.Deframer()
    deframer.feed(bytes.fromhex(entry["frame"]))
    body = deframer.next_body()
    if body is None:
        raise wire.ProtocolError("no whole frame")
    if deframer.pending():
        raise wire.ProtocolError("bytes after the frame")
    return wire.decode(body, variants(entry))


class Golden(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(GOLDEN, encoding="utf-8") as f:
            cls.doc = json.load(f)

    def test_versions(self):
        import jobsup_runtime as jr
        self.assertEqual(self.doc["protocol_version"], jr.MAX_VERSION)
        self.assertEqual(jr.MIN_VERSION, jr.MAX_VERSION)

    def test_every_message_encodes_to_its_bytes_and_back(self):
        for entry in self.doc["valid"]:
            with self.subTest(entry["name"]):
                msg = message(entry["message"])
                self.assertEqual(wire.encode(msg, variants(entry)).hex(), entry["frame"])
                self.assertEqual(decode_frame(entry), msg)

    def test_longer_integer_forms_are_read(self):
        for entry in self.doc["decode_only"]:
            with self.subTest(entry["name"]):
                msg = message(entry["message"])
                self.assertNotEqual(wire.encode(msg, variants(entry)).hex(), entry["frame"])
                self.assertEqual(decode_frame(entry), msg)

    def test_malformed_frames_are_refused(self):
        for entry in self.doc["invalid"]:
            with self.subTest(entry["name"]):
                with self.assertRaises(wire.ProtocolError):
                    decode_frame(entry)

    def test_frames_split_anywhere_come_out_whole(self):
        stream = b"".join(bytes.fromhex(e["frame"]) for e in self.doc["valid"]
                          if e["direction"] == "to_worker" and len(e["frame"]) < 2000)
        want = [message(e["message"]) for e in self.doc["valid"]
                if e["direction"] == "to_worker" and len(e["frame"]) < 2000]
        for step in (1, 3, 7, 64):
            deframer, got = wire.Deframer(), []
            for i in range(0, len(stream), step):
                deframer.feed(stream[i:i + step])
                while (body := deframer.next_body()) is not None:
                    got.append(wire.decode(body, wire.TO_WORKER))
            self.assertEqual(got, want)
            self.assertEqual(deframer.pending(), 0)

    def test_out_of_range_values_are_not_encoded(self):
        with self.assertRaises(wire.ProtocolError):
            wire.encode({"type": "Heartbeat", "job": 2 ** 64})
        with self.assertRaises(wire.ProtocolError):
            wire.encode({"type": "Hello", "min_version": 2, "max_version": 2, "pid": -1})
        with self.assertRaises(wire.ProtocolError):
            wire.encode({"type": "Done", "job": 1, "ok": b"x" * 100}, max_frame=50)


if __name__ == "__main__":
    unittest.main()
