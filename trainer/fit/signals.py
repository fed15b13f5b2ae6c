"""Stop a cluster worker when told (SIGTERM, SIGINT) and show what it waits for while the
cluster forms: `train` on several workers runs as two processes, a supervisor and the training
process it starts.

Why two: while MultiWorkerMirroredStrategy waits for its peers, the main thread sits in
TensorFlow's C++ (TFE_EnableCollectiveOps) holding the GIL, so no Python signal handler and no
Python thread of that process runs (measured on TF 2.21: a thread that prints every 2 s stays
silent for the whole wait), and TF's preemption notifier has replaced the SIGTERM handler (it
only records the signal). The supervisor holds no TensorFlow and stays responsive.

The supervisor (:func:`supervise`, from the `train` command when TF_CONFIG names several
workers) runs the same command again as its child (stdin closed, stdout and stderr shared,
SIGINT ignored) and:

- while the workers join: one line when the wait starts, then every PROGRESS_S which peers it
  still waits for (task, address, whether anything listens there), and one line when all have
  joined. TensorFlow's registration barrier ends a wait that lasts
  $EDGE_TRANSFER_STARTUP_TIMEOUT_S (trainer.fit.cluster: the training process names the missing
  workers, exit 2); if TF has not ended it STARTUP_SLACK_S later, the supervisor does.
- on SIGTERM or SIGINT, at any stage: SIGTERM to the training process, which unwinds at its
  next Python bytecode; SIGKILL after GRACE_S if it has not ended, and at once while it waits
  for its peers (stuck in TF's C++, nothing written yet). Then one line and exit 128 + the
  signal: 143 for SIGTERM (Kubernetes, Vertex AI: SIGTERM, a grace period, SIGKILL), 130 for
  SIGINT. A second signal kills at once.
- otherwise: the training process's exit code (128 + N when a signal N killed it).

The training process (:func:`start`; every other function of this side is a no-op without a
supervisor, so one process behaves as before):

- SIGTERM raises :class:`Stopped` in the main thread at its next bytecode (between two
  fine-tuning steps, two feature chunks, ...), so ``finally`` blocks and context managers remove
  temp files and work folders; inside :func:`critical` (a checkpoint save, the run being
  written and swapped in) the stop waits for the section to end.
- SIGINT is ignored (the supervisor, which the terminal's Ctrl-C reaches too, decides).
- :func:`report` tells the supervisor the stage and the last saved fine-tuning epoch, for its
  progress and stop lines.
- It dies with its supervisor (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from trainer.fit.cluster import STARTUP_ENV, Cluster, not_joined, startup_timeout, unreachable

ENV_FD = "EDGE_TRANSFER_SUPERVISOR_FD"  # "FD,PID": the pipe to the supervisor and its pid, set by it
WAITING, JOINED = "waiting for the other workers to join", "joined"
FINE_TUNING = "fine-tuning"
PROGRESS_S = 15.0  # a line about the missing peers this often while the cluster forms
GRACE_S = 5.0  # a polite stop may take this long before SIGKILL
STARTUP_SLACK_S = 30.0  # TF's registration barrier gets this long past the timeout to end the wait

_fd: int | None = None
_depth = 0  # nesting of critical sections
_pending: int | None = None  # a signal that arrived inside one
_stopping = False  # Stopped was raised
_requested: int | None = None  # the signal that asked for the stop


# ---- the training process


class Stopped(BaseException):
    """SIGTERM reached the training process: unwind, then exit ``128 + signum`` without a word
    (the supervisor prints the line). A BaseException, so ``except Exception`` lets it through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def supervised() -> bool:
    """This process was started by the supervisor (and :func:`start` has run, or will)."""
    return _fd is not None or ENV_FD in os.environ


def start() -> None:
    """Become the supervised training process: stop on SIGTERM, die with the supervisor."""
    global _fd
    if _fd is not None or ENV_FD not in os.environ:
        return
    fd, _, pid = os.environ.pop(ENV_FD).partition(",")  # popped: processes this one starts do not report
    _fd = int(fd)
    _die_with_parent(int(pid or 0))
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited already; Ctrl-C is the supervisor's


def after_tensorflow() -> None:
    """Take SIGTERM back once TensorFlow's coordination service has installed its own."""
    if _fd is not None:
        signal.signal(signal.SIGTERM, _handler)


def report(kind: str, *words: object) -> None:
    """One line to the supervisor: ``stage TEXT``, ``saved EPOCH EPOCHS``, ``inputs DIR``."""
    if _fd is None:
        return
    line = " ".join([kind, *(str(w) for w in words)]).replace("\n", " ") + "\n"
    try:
        os.write(_fd, line.encode())
    except OSError:  # the supervisor is gone: PR_SET_PDEATHSIG ends this process
        pass


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A stop that arrives meanwhile waits for the end of the block (a checkpoint being saved,
    the run being written): the supervisor's grace period, not a Python exception, may end it."""
    global _depth, _pending, _stopping
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _pending is not None:
        signum, _pending, _stopping = _pending, None, True
        raise Stopped(signum)


def exit_now(code: int, atexit_s: float = 1.0) -> None:
    """Leave without waiting on TensorFlow's teardown (its gRPC server and coordination agent may
    wait for peers that are gone): open progress bars are closed (the supervisor's line starts a
    line of its own), the atexit functions (autograph's temp files, log handlers) get ``atexit_s``,
    then the process ends. What this process wrote is already whole or removed."""
    std = sys.modules.get("tqdm.std")  # progress bars a stop cut short end their line first
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()
    worker = threading.Thread(target=atexit._run_exitfuncs, daemon=True)  # what a normal exit runs
    worker.start()
    worker.join(atexit_s)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def requested() -> int | None:
    """The signal a stop was asked with, if one was: whatever the unwinding then raises (a peer's
    exit failing a collective, TensorFlow wrapping Stopped in its own error) is part of the stop."""
    return _requested


def _handler(signum, frame) -> None:
    global _pending, _stopping, _requested
    _requested = _requested or signum
    if _stopping:  # once: a second Stopped could cut the clean-up of the first short
        return
    if _depth:
        _pending = signum
        return
    _stopping = True
    raise Stopped(signum)


def _unraisable(previous):
    """Python drops an exception raised inside a finalizer (a weakref callback, ``__del__``) with
    a traceback; Stopped raised there is asked for again a moment later, out of the finalizer."""
    def hook(unraisable):
        global _stopping
        if isinstance(unraisable.exc_value, Stopped):
            _stopping = False
            again = threading.Timer(0.05, os.kill, (os.getpid(), unraisable.exc_value.signum))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    return hook


def _die_with_parent(supervisor: int) -> None:
    """SIGKILL this process when the supervisor dies, even by SIGKILL (Linux; elsewhere a
    killed supervisor leaves this one to the scheduler)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if supervisor and os.getppid() != supervisor:  # it died before prctl took effect
        os._exit(128 + signal.SIGKILL)


# ---- the supervisor


def wanted(argv: list[str]) -> bool:
    """Supervise this `train`: TF_CONFIG names several workers, this is a command line (not a
    test's in-process call) and no supervisor started this process."""
    try:
        cluster = Cluster.from_env()
    except ValueError:  # the training process reports a bad TF_CONFIG, in one process
        return False
    return cluster.workers > 1 and argv[1:2] == ["train"] and not supervised()


@dataclass
class _State:
    """What the training process last reported (the reader thread updates it)."""

    stage: str = ""
    saved: str = ""  # "EPOCH EPOCHS" of the last fine-tuning checkpoint
    inputs: str = ""  # a fresh --out that now holds the run's labels, splits, config
    written: str = ""  # the chief has written the run (where)
    waiting_since: float | None = None
    joined_after: float | None = None  # seconds the cluster took to form

    def update(self, line: str) -> None:
        kind, _, rest = line.strip().partition(" ")
        if kind == "stage":
            if rest == WAITING:
                self.waiting_since = time.monotonic()
            elif self.stage == WAITING:
                self.joined_after = time.monotonic() - self.waiting_since
            self.stage = rest
        elif kind == "saved":
            self.saved = rest
        elif kind == "inputs":
            self.inputs = rest
        elif kind == "written":
            self.written = rest


def supervise(command: list[str], cluster: Cluster | None = None) -> int:
    """Run ``command`` (the same `train`) as the training process; its exit code, or 128 + the
    signal that stopped it."""
    cluster = cluster or Cluster.from_env()
    try:
        timeout_s = startup_timeout()
    except ValueError:
        timeout_s = None  # the training process says what is wrong with it
    caught: list[int] = []
    child, forwarded = None, []

    def forward() -> None:  # one SIGTERM: a second could cut its clean-up short
        if child is not None and not forwarded:
            forwarded.append(True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)

    def on_signal(signum, frame):
        caught.append(signum)
        forward()  # at once: before a stopped peer's exit fails this worker's collective

    signal.signal(signal.SIGTERM, on_signal)
    read, write = os.pipe()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: Ctrl-C is for us to handle
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=(write,),
                                 env={**os.environ, ENV_FD: f"{write},{os.getpid()}"})
    finally:
        signal.signal(signal.SIGINT, on_signal)
        os.close(write)
    state = _State()
    reader = threading.Thread(target=_read, args=(read, state), daemon=True)
    reader.start()
    rc = _watch(child, cluster, state, caught, timeout_s, forward)
    reader.join(timeout=1.0)
    if caught and rc != 0:  # (0: it had finished before the stop took effect)
        _say(stop_line(caught[0], state, cluster))
        return 128 + caught[0]
    if rc == 128 + signal.SIGTERM:  # someone sent SIGTERM to the training process itself
        _say(stop_line(signal.SIGTERM, state, cluster))
    elif rc < 0:
        _say(f"error: the training process of {cluster.name(cluster.rank)} was killed by "
             f"{signal.Signals(-rc).name} while {state.stage or 'starting'}")
        return 128 - rc
    return rc


def _watch(child: subprocess.Popen, cluster: Cluster, state: _State, caught: list[int],
           timeout_s: float | None, forward) -> int:
    kill_at = next_progress = None
    joined_said = False
    while (rc := child.poll()) is None:
        now = time.monotonic()
        waiting = state.stage == WAITING
        if caught:
            if kill_at is None:
                forward()  # (done already, unless the signal came before the child)
                kill_at = now if waiting else now + GRACE_S
            if now >= kill_at or len(caught) > 1 or waiting:
                child.kill()  # stuck in TF's start-up wait, or too slow, or told twice
        elif waiting and next_progress is None:
            next_progress = state.waiting_since + PROGRESS_S
            limit = f"; gives up after {timeout_s:g} s, {STARTUP_ENV}" if timeout_s else ""
            others = (", ".join(cluster.name(r) for r in cluster.peers) if cluster.workers <= 4
                      else f"the other {cluster.workers - 1} workers")
            _say(f"{_me(cluster)}: waiting for {others} to join{limit}")
        elif waiting and now >= next_progress:
            next_progress += PROGRESS_S
            seconds = now - state.waiting_since
            _say(progress_line(cluster, seconds, timeout_s))
            if timeout_s and seconds > timeout_s + STARTUP_SLACK_S:  # TF did not end it
                child.kill()
                child.wait()
                _say("error: " + not_joined(cluster, (), timeout_s))
                return 2
        elif state.joined_after is not None and not joined_said:
            joined_said = True
            _say(f"{_me(cluster)}: all {cluster.workers} workers joined in {state.joined_after:.1f} s")
        time.sleep(0.1)
    return rc


def progress_line(cluster: Cluster, seconds: float, timeout_s: float | None) -> str:
    """'still waiting for worker 1 (host:port): nothing listens there yet (15 s of 300 s)'."""
    closed = unreachable(cluster, cluster.peers)
    of = f"{seconds:.0f} s of {timeout_s:g} s" if timeout_s else f"{seconds:.0f} s"
    if not closed:
        return f"still waiting: every other worker listens, registering with {cluster.name(0)} ({of})"
    names = ", ".join(cluster.name(r) for r in closed)
    return f"still waiting for {names}: nothing listens there yet ({of})"


def stop_line(signum: int, state: _State, cluster: Cluster) -> str:
    """The one line of a stopped worker: where it was and how to go on."""
    stage = {"": "starting", JOINED: "starting to train"}.get(state.stage, state.stage)
    if state.written:
        then = f"the run was written ({state.written})"
    elif stage in ("starting", WAITING):
        then = "nothing was written; run the same command on every worker to start again"
    elif state.saved:  # kept until the run is written
        epoch, _, epochs = state.saved.partition(" ")
        saved = f"epoch {epoch} of {epochs}" if stage == FINE_TUNING else f"fine-tuning (epoch {epoch} of {epochs})"
        then = f"{saved} is saved; run the same command on every worker to resume"
    else:
        then = "run the same command on every worker to start again"
    if state.inputs and not state.written:
        then += f" (add --overwrite here: {state.inputs} holds this run's inputs)"
    return f"{_me(cluster)} interrupted by {signal.Signals(signum).name} while {stage}: {then}"


def _me(cluster: Cluster) -> str:
    return cluster.name(cluster.rank, of=True)


def _read(fd: int, state: _State) -> None:
    with os.fdopen(fd, "r", errors="replace") as lines:
        for line in lines:
            state.update(line)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
