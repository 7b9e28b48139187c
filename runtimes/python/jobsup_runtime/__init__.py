"""Write a jobsup native processor in Python (standard library only).

    import jobsup_runtime as jr

    def handle(job):            # job.payload (bytes), job.id, job.key, job.attempt, job.kind
        job.heartbeat()
        job.progress(0.5)
        return "result"         # str or bytes -> ok; an exception -> failed with its message

    jr.serve(handle)

A cleanup request (the job's ttl passed, or jobsup is stopping) raises `Cleanup` inside the
handler, also in the middle of `time.sleep` or a pure-Python loop. Let it propagate (after
cleaning up in `finally` or `except jr.Cleanup`): once the handler returns or raises, the
runtime acknowledges the request and the process exits 124. Code stuck in C never sees
the exception; jobsup's kill at the end of the cleanup window deals with that.

How the request gets in: fd 3 is put in signal-driven mode (O_ASYNC, SIGIO to this
process), so the kernel interrupts the main thread when a frame arrives while a handler
runs; the SIGIO handler reads it and raises `Cleanup`. No thread hands jobs over, so a job
costs two system calls more than the frames themselves. The handler therefore runs on the
main thread, and SIGIO belongs to the runtime.

The wire format is PROTOCOL.md's; `jobsup_runtime.wire` is the codec.
"""

import fcntl
import os
import select
import signal
import sys
import threading
import traceback

from . import wire
from .wire import ProtocolError

__all__ = ["serve", "Cleanup", "Job", "ProtocolError", "wire",
           "MIN_VERSION", "MAX_VERSION"]

#: The protocol versions this runtime speaks.
MIN_VERSION = 2
MAX_VERSION = 2

JOB_FD = 3
RESULT_FD = 4

# Exit codes, as the Rust runtime's: 124 after a cleanup (GNU timeout's), 2 when not run by
# jobsup, 3 when the link to jobsup broke.
EXIT_CLEANED_UP = 124
EXIT_NOT_STARTED = 2
EXIT_BROKEN = 3


class Cleanup(BaseException):
    """Raised inside the handler when jobsup asks the job to clean up and stop.

    A BaseException, so that `except Exception` in the job's code does not swallow it.
    """


class Job:
    """One job, as the handler sees it."""

    __slots__ = ("id", "key", "payload", "attempt", "kind", "ttl_ms", "_rt")

    def __init__(self, msg, rt):
        #: jobsup's number for this hand-off, unique within a run (what frames name).
        self.id = msg["id"]
        #: The job's id as the user gave it (ndjson `id`, else its line number).
        self.key = msg["key"]
        #: The job's input, as bytes.
        self.payload = msg["payload"]
        #: Which attempt this is, from 1.
        self.attempt = msg["attempt"]
        #: The job's kind (ndjson `kind`), or None.
        self.kind = msg["kind"]
        #: Milliseconds before the cleanup request (0: no deadline).
        self.ttl_ms = msg["ttl_ms"]
        self._rt = rt

    def heartbeat(self):
        """Tells jobsup the job is alive: moves its idle timeout."""
        self._rt.send({"type": "Heartbeat", "job": self.id})

    def progress(self, done, total=None, message=None):
        """Reports progress (also a heartbeat).

        `progress(0.5)`: a fraction (a float with no total), sent as 500 of 1000.
        `progress(3, 10)`: units done of a total; `total` may be None when unknown.
        """
        if isinstance(done, float) and total is None:
            if not 0.0 <= done <= 1.0:
                raise ValueError(f"a progress fraction is between 0 and 1, not {done}")
            done, total = round(done * 1000), 1000
        self._rt.send({"type": "Progress", "job": self.id, "done": int(done),
                       "total": None if total is None else int(total), "message": message})

    def __repr__(self):
        # A payload can be large or secret: its size, not its bytes.
        return (f"Job(id={self.id}, key={self.key!r}, attempt={self.attempt}, "
                f"kind={self.kind!r}, payload=<{len(self.payload)} bytes>)")


def _say(text):
    try:
        sys.stderr.write(f"jobsup_runtime: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _Runtime:
    def __init__(self, max_frame):
        self.deframer = wire.Deframer(max_frame)
        self.max_frame = max_frame
        self.poller = select.poll()
        self.poller.register(JOB_FD, select.POLLIN)
        self.write_lock = threading.Lock()
        self.eof = False
        # The job the handler runs (None when idle), and where its cleanup stands.
        self.busy = None
        self.cleanup_wanted = False
        self.cleanup_raised = False
        self.draining = False
        # Set while main-thread runtime code the signal handlers must not interrupt is
        # running (a frame half written, the request buffer being read); they then only
        # note that they came, and that code looks again when it is done. Signal handlers
        # run on the main thread, so only the main thread counts here.
        self.guarded = 0
        self.deferred = False
        self.terminate = False
        self.main = threading.get_ident()

    # -- writing ---------------------------------------------------------------------

    def send(self, msg):
        frame = wire.encode(msg, wire.FROM_WORKER, self.max_frame)
        on_main = threading.get_ident() == self.main
        with self.write_lock:
            self.guarded += on_main
            try:
                view = memoryview(frame)
                while view:
                    try:
                        n = os.write(RESULT_FD, view)
                    except BlockingIOError:
                        select.select([], [RESULT_FD], [])
                        continue
                    view = view[n:]
            except OSError as e:
                # jobsup is gone: nobody is left to tell.
                _say(f"cannot write to jobsup on fd {RESULT_FD}: {e}")
                os._exit(EXIT_BROKEN)
            finally:
                self.guarded -= on_main
        if on_main:
            self.catch_up()

    # -- reading ---------------------------------------------------------------------

    def next_request(self):
        """The next request, waiting for it; None at end of file."""
        while True:
            msg = self.buffered()
            if msg is not None or self.eof:
                return msg
            self.read(block=True)

    def buffered(self):
        try:
            body = self.deframer.next_body()
            return None if body is None else wire.decode(body, wire.TO_WORKER)
        except ProtocolError as e:
            self.broken(f"cannot read a request from jobsup on fd {JOB_FD}: {e}")

    def read(self, block):
        """Reads what fd 3 holds into the buffer; only waits when `block`."""
        if not block and not self.poller.poll(0):
            return False
        while True:
            try:
                data = os.read(JOB_FD, 1 << 16)
                break
            except BlockingIOError:
                # Someone made the pipe non-blocking: wait for it the other way.
                if not block:
                    return False
                self.poller.poll()
            except OSError as e:
                self.broken(f"cannot read from jobsup on fd {JOB_FD}: {e}")
        if not data:
            self.eof = True
            if self.deframer.pending():
                self.broken(f"fd {JOB_FD} ended inside a frame")
            return False
        self.deframer.feed(data)
        return True

    def broken(self, why):
        _say(why)
        os._exit(EXIT_BROKEN)

    # -- while a job runs ------------------------------------------------------------

    def on_sigio(self, _signum, _frame):
        if self.busy is None:
            return
        if self.guarded:
            self.deferred = True
            return
        self.look()

    def on_sigterm(self, _signum, _frame):
        if self.busy is None:
            # Idle: a SIGTERM is a request to exit, once no frame is half written.
            if self.guarded:
                self.terminate = True
                return
            os._exit(0)
        self.cleanup_wanted = True
        if self.guarded:
            self.deferred = True
            return
        self.look()

    def catch_up(self):
        if self.terminate and self.busy is None:
            os._exit(0)
        if self.deferred and not self.guarded and self.busy is not None:
            self.look()

    def look(self):
        """Takes in whatever jobsup sent while the job runs; raises Cleanup when asked."""
        self.guarded += 1
        try:
            self.deferred = False
            while not self.eof and self.read(block=False):
                pass
            while True:
                msg = self.buffered()
                if msg is None:
                    break
                kind = msg["type"]
                if kind == "Cleanup":
                    # One for an earlier job (it ended as the request crossed) still means
                    # jobsup is done with this worker; cleaning up the current one is right.
                    self.cleanup_wanted = True
                elif kind == "Shutdown":
                    self.draining = True
                else:
                    self.broken(f"jobsup sent job {msg['id']} while job {self.busy.id} "
                                "was still running")
            if self.eof:
                # End of file on fd 3 is a shutdown: finish the job, then exit.
                self.draining = True
        finally:
            self.guarded -= 1
        if self.cleanup_wanted and not self.cleanup_raised and self.busy is not None:
            self.cleanup_raised = True
            raise Cleanup(f"jobsup asked job {self.busy.id} to clean up")

    def run(self, handle, msg):
        job = Job(msg, self)
        self.cleanup_wanted = self.cleanup_raised = False
        outcome = None
        # The one Cleanup a job can get may land anywhere from `busy = job` to the point
        # where busy is None again, handlers of the job's own exception included: hence
        # the outer try.
        try:
            try:
                self.busy = job
                # Whatever is already in the pipe came before SIGIO would report it.
                self.look()
                value = handle(job)
                self.busy = None
                outcome = _as_result(value)
            except Exception as e:
                self.busy = None
                # The record gets the message; jobsup logs stderr with the job's id.
                traceback.print_exc()
                outcome = {"failed": str(e) or type(e).__name__}
        except Cleanup:
            pass
        self.busy = None
        if outcome is not None:
            outcome.update(type="Done", job=job.id)
            # After a cleanup request the result is still sent: jobsup keeps a result that
            # arrives in the cleanup window in the record.
            self.send(outcome)
        if self.cleanup_wanted:
            self.send({"type": "CleanupDone", "job": job.id})
            sys.stdout.flush()
            os._exit(EXIT_CLEANED_UP)


def _as_result(value):
    if value is None:
        return {"ok": b""}
    if isinstance(value, str):
        return {"ok": value.encode("utf-8")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"ok": bytes(value)}
    return {"failed": f"the handler returned {type(value).__name__}; "
                      "a result is str, bytes or None"}


def _connect():
    program = sys.argv[0] if sys.argv and sys.argv[0] else "<program>"
    version = os.environ.get("JOBSUP_PROTOCOL")

    def refuse(why):
        _say(f"{program}: this is a jobsup processor; it serves jobs sent by jobsup and "
             f"cannot be run on its own ({why})\nrun it as: jobsup run -- python3 {program}")
        sys.exit(EXIT_NOT_STARTED)

    if version is None:
        refuse("JOBSUP_PROTOCOL is not set")
    for fd in (JOB_FD, RESULT_FD):
        try:
            os.fstat(fd)
        except OSError:
            refuse(f"JOBSUP_PROTOCOL is set but fd {fd} is not open")
    # The variable is jobsup's highest version; the hello tells it our range, and jobsup
    # refuses us if its lowest is above our highest.
    try:
        theirs = int(version.strip())
    except ValueError:
        theirs = -1
    if theirs < MIN_VERSION:
        _say(f"{program}: protocol version mismatch: jobsup speaks versions up to "
             f"{version!r}, this processor (jobsup_runtime) needs version {MIN_VERSION} "
             "or later")
        sys.exit(EXIT_NOT_STARTED)
    try:
        max_frame = int(os.environ.get("JOBSUP_MAX_FRAME", wire.DEFAULT_MAX_FRAME))
        if max_frame <= 0 or max_frame > wire.U32_MAX:
            raise ValueError
    except ValueError:
        _say(f"{program}: JOBSUP_MAX_FRAME={os.environ['JOBSUP_MAX_FRAME']!r} is not a "
             "frame size in bytes")
        sys.exit(EXIT_NOT_STARTED)
    # Programs the handler starts must not inherit the pipes: a grandchild holding fd 4
    # would hide this worker's death from jobsup, one reading fd 3 would steal requests.
    for fd in (JOB_FD, RESULT_FD):
        os.set_inheritable(fd, False)
    return max_frame


def serve(handle):
    """Serves jobs from jobsup with `handle(job)` until jobsup says stop; never returns."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("jobsup_runtime.serve runs on the main thread "
                           "(cleanup requests arrive as signals there)")
    rt = _Runtime(_connect())
    # Handlers first: SIGIO's default action kills the process, and SIGTERM must become a
    # cleanup request, not an instant death. A SIGTERM someone chose to ignore stays so.
    signal.signal(signal.SIGIO, rt.on_sigio)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, rt.on_sigterm)
    fcntl.fcntl(JOB_FD, fcntl.F_SETOWN, os.getpid())
    flags = fcntl.fcntl(JOB_FD, fcntl.F_GETFL)
    fcntl.fcntl(JOB_FD, fcntl.F_SETFL, flags | os.O_ASYNC)
    rt.send({"type": "Hello", "min_version": MIN_VERSION, "max_version": MAX_VERSION,
             "pid": os.getpid()})
    code = 0
    while True:
        if rt.draining:
            break
        msg = rt.next_request()
        if msg is None or msg["type"] == "Shutdown":
            break
        if msg["type"] == "Cleanup":
            # Idle (the job it names already ended): nothing to clean up, but jobsup has
            # given up on this worker all the same.
            rt.send({"type": "CleanupDone", "job": msg["job"]})
            code = EXIT_CLEANED_UP
            break
        rt.run(handle, msg)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
