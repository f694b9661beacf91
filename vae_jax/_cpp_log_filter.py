"""``python -I _cpp_log_filter.py PROG INDEX COUNT COORDINATOR``: stderr of a --distributed run.

Started by `vae_jax.distributed.initialize` with the trainer's file descriptor 2 on its
stdin (a pipe) and the original stderr as its stdout. It passes every byte on as it comes,
except when JAX's C++ runtime ends the process: an absl FATAL record (``F1202 12:44:53.166541
20669 client.h:80] Terminating process because ...``), its GRPC detail, ``*** Check failure
stack trace: ***`` and the frames, then ``abort()`` (exit 134). From that record to the end
of its input it passes nothing on, and prints one line instead, naming the cause where it can
tell (process 0, the coordinator, gone; an index process 0 does not expect), unless the
trainer printed its own error line (``PROG: error: ...``) before. The C++ log records (absl's
I/W/E lines) are held back ``HOLD_S`` first: those that JAX writes just before its FATAL one
(the same failure, seen by other threads) go with it.

Standard library only, no import of vae_jax or JAX (``-I``: it starts in a few ms). It
ignores SIGINT, SIGTERM, SIGHUP (a terminal's Ctrl-C reaches it neither: it runs in a
session of its own) and ends at the end of its input, when every copy of the trainer's
descriptor 2 is closed; if its output is gone (EPIPE), it goes on reading and drops it, so
the trainer never blocks on a full pipe. Anything unexpected in here turns it into a plain
copy.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

HOLD_S = 0.5  # how long absl's I/W/E records wait for a FATAL one that would drop them
PARTIAL_S = 0.2  # how long the start of a line that may be an absl header waits for the rest
KEEP = 1 << 16  # bytes of the FATAL record kept to name the cause
HEADER = rb"\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]\s]+:\d+\] "
FATAL = re.compile(rb"F" + HEADER)  # (anywhere: a progress bar may leave a line open)
RECORD = re.compile(rb"(?m)^[IWE]" + HEADER)
# Every beginning of an absl header (a read may split one).
PREFIX = re.compile(
    rb"[IWEF](\d{1,4}( (\d{1,2}(:(\d{1,2}(:(\d{1,2}(\.(\d+( +(\d+( ([^\]\s]*\]?)?"
    rb")?)?)?)?)?)?)?)?)?)?)?)?"
)
STACK_TRACE = b"*** Check failure stack trace: ***"
TERMINATING = b"Terminating process because the JAX distributed service detected fatal errors"
GONE_SIGNS = (b"Socket closed", b"UNAVAILABLE", b"Connection refused", b"leader task")
SHOW_LOG = "(TF_CPP_MIN_LOG_LEVEL=0 shows JAX's own log)"


class Filter:
    """The state between reads: what is held back, and whether a FATAL record came."""

    def __init__(self, out: int, prog: str, index: str, count: str, coordinator: str) -> None:
        self.out = out
        self.prog, self.index, self.count, self.coordinator = prog, index, count, coordinator
        self.pending = b""  # not passed on yet: a held record (from its start), or a tail
        self.held_since: float | None = None  # when the held record came
        self.tail_since: float | None = None  # when the held tail (a possible header) came
        self.fatal: bytearray | None = None  # the FATAL record on (up to KEEP bytes)
        self.said = False  # this process's error line was printed (ours or the trainer's)
        self.broken = False  # the output is gone
        self.last = b"\n"  # the last byte passed on

    def feed(self, data: bytes, now: float) -> None:
        if self.fatal is not None:
            self.fatal += data[: max(KEEP - len(self.fatal), 0)]
            if STACK_TRACE in self.fatal:
                self.say()
            return
        self.pending += data
        match = FATAL.search(self.pending)
        if match is not None:
            if self.held_since is None:  # (else the held records go with it; so do those
                record = RECORD.search(self.pending, 0, match.start())  # (read with it)
                self.write(self.pending[: match.start() if record is None else record.start()])
            self.fatal = bytearray(self.pending[match.start() :][:KEEP])
            self.pending, self.held_since, self.tail_since = b"", None, None
            if STACK_TRACE in self.fatal:
                self.say()
            return
        if self.held_since is None:
            record = RECORD.search(self.pending)
            if record is not None:
                self.write(self.pending[: record.start()])
                self.pending, self.held_since = self.pending[record.start() :], now
                return
            self.release(now, everything=False)

    def tick(self, now: float) -> None:
        """(No input for a while.) Pass on what was held long enough."""
        if self.fatal is not None:
            return
        if self.held_since is not None and now - self.held_since >= HOLD_S:
            self.held_since = None
            self.release(now, everything=False)
        elif self.held_since is None and self.tail_since is not None:
            if now - self.tail_since >= PARTIAL_S:
                self.release(now, everything=True)

    def timeout(self, now: float) -> float | None:
        """Seconds until `tick` has something to do (None: nothing held)."""
        if self.fatal is not None:
            return None
        if self.held_since is not None:
            return max(self.held_since + HOLD_S - now, 0.0)
        if self.tail_since is not None:
            return max(self.tail_since + PARTIAL_S - now, 0.0)
        return None

    def release(self, now: float, *, everything: bool) -> None:
        """Pass on what is pending, but a last line that may be the start of a header."""
        keep = 0 if everything else _possible_header(self.pending)
        self.write(self.pending[: len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep :]
        if not keep:
            self.tail_since = None
        elif self.tail_since is None:
            self.tail_since = now

    def end(self) -> None:
        """(The end of the input.)"""
        if self.fatal is not None:
            self.say()
        else:
            self.write(self.pending)
            self.pending = b""

    def say(self) -> None:
        if self.said:
            return
        self.said = True
        line = f"{self.prog}: error: {self.message(bytes(self.fatal or b''))} {SHOW_LOG}\n"
        self.write((b"" if self.last == b"\n" else b"\n") + line.encode(errors="replace"))

    def message(self, text: bytes) -> str:
        """What our line says about the FATAL record `text`."""
        who = f"process {self.index}"
        where = f"the coordinator at {self.coordinator}" if self.coordinator else "the coordinator"
        if b"Unexpected task registered" in text:
            return (
                f"--distributed: {who} of {self.count}: {where} does not expect this process: "
                "is JAX_PROCESS_ID below process 0's JAX_NUM_PROCESSES, and not another "
                "process's too? start all processes with the same JAX_NUM_PROCESSES, each "
                "with its own JAX_PROCESS_ID"
            )
        if TERMINATING in text and self.index != "0" and any(s in text for s in GONE_SIGNS):
            return (
                f"{who}: process 0 ({where}) is gone (killed or stopped); leaving too: start "
                "them all again to resume"
            )
        cause = _first_sentence(text)
        return (
            f"{who}: JAX's distributed runtime ended this process: {cause}; see the other "
            "processes' output, then start them all again to resume"
        )

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self.said and f"{self.prog}: error: ".encode() in data:
            self.said = True  # (the trainer's own line: ours would be a second one)
        self.last = data[-1:]
        while data and not self.broken:
            try:
                data = data[os.write(self.out, data) :]
            except InterruptedError:
                continue
            except OSError:  # (EPIPE, EIO: nobody reads any more)
                self.broken = True


def _possible_header(pending: bytes) -> int:
    """How many bytes at the end of `pending` may be the start of an absl header."""
    line = pending[pending.rfind(b"\n") + 1 :]
    if line and PREFIX.fullmatch(line):
        return len(line)
    start = line.rfind(b"F")
    if start > 0 and PREFIX.fullmatch(line, start):
        return len(line) - start
    return 0


def _first_sentence(text: bytes, limit: int = 200) -> str:
    """JAX's reason, shortened: its absl::Status if it gives one, else its first sentence."""
    body = text.decode(errors="replace")
    body = body.split("] ", 1)[-1]
    status = body.find("absl::Status: ")
    if status >= 0:
        body = body[status + len("absl::Status: ") :]
    body = body.split(STACK_TRACE.decode(), 1)[0]
    body = " ".join(body.split())
    if status < 0:
        body = body.split(". ", 1)[0]
    return body if len(body) <= limit else body[: limit - 3] + "..."


def main(argv: list[str]) -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    prog, index, count, coordinator = (argv + ["vae_jax", "?", "?", ""])[:4]
    out = sys.stdout.fileno()
    try:
        state = Filter(out, prog, index, count, coordinator)
        while True:
            if select.select([0], [], [], state.timeout(time.monotonic()))[0]:
                data = os.read(0, 1 << 16)
                if not data:
                    break
                state.feed(data, time.monotonic())
            state.tick(time.monotonic())
        state.end()
    except Exception:  # (a bug here must not lose the trainer's output: a plain copy on)
        while data := os.read(0, 1 << 16):
            try:
                os.write(out, data)
            except OSError:
                pass


if __name__ == "__main__":
    main(sys.argv[1:])
