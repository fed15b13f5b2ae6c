"""Mutation fuzzing of model loading: a damaged .tflite must classify or fail with one line.

The engine behind tests/test_edge_fuzz.py and scripts/fuzz_models.py. Mutant ``i`` of seed
``s`` is a pure function of (s, i) and the seed models, so any mutant can be rebuilt anywhere.
A worker process (``python tests/model_fuzz.py worker ...``, run by the interpreter of the
backend under test) runs `python -m edge classify`'s own code in-process on a batch of mutants
and reports each start and outcome on a pipe; the parent maps a worker that dies (signal) or
stops reporting (timeout) to the mutant it was on, and restarts a worker after it. Outcomes:
ok (classified), error (exit 2, one ``error:`` line), and the failures crash, hang, traceback,
bad (any other exit or output).
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a worker script from any venv
    sys.path.insert(0, str(REPO))
from tests.paths import SHARED_DATA as DATA  # noqa: E402

FAILURES = ("crash", "hang", "traceback", "bad")
OUTCOMES = ("ok", "error", *FAILURES)
# seed model file name -> relative weight (small models are cheap to run, so they get more mutants)
GOOGLE_SEEDS = {
    "coral/mobilenet_v1_0.25_128_quant.tflite": 2,
    "coral/mobilenet_v2_1.0_224_quant.tflite": 1,
    "coral/tf2_mobilenet_v2_1.0_224_ptq.tflite": 1,
    "tflite_support/mobilenet_v1_0.25_224_quant.tflite": 2,
    "tflite_support/mobilenet_v1_0.25_224_1_metadata_1.tflite": 1,
    "tflite_support/automl_labeler_model.tflite": 2,
    "tflite_support/mobilenet_v2_1.0_224_quant_nometadata.tflite": 1,
}
OUR_SEEDS = {"tiny_float32.tflite": 4, "tiny_int8.tflite": 4, "ours_int8.tflite": 2}


# --------------------------------------------------------------------------- seeds (main venv)
def prepare_seeds(out: Path) -> Path:
    """Write the seed models and a photo into ``out``: our tiny float32/int8 models with our
    metadata (trainer.export.metadata), our shipped int8 MobileNetV2, and Google's models."""
    from trainer.export.metadata import MetadataInfo, add_metadata

    out.mkdir(parents=True, exist_ok=True)
    info = MetadataInfo("Tiny", "fuzz seed", "1", "edge-transfer tests", "Apache-2.0",
                        ["daisy", "rose petal", "Große Blume"])
    for kind in ("float32", "int8"):
        bare = (REPO / "tests" / "data" / f"tiny_{kind}.tflite").read_bytes()
        (out / f"tiny_{kind}.tflite").write_bytes(add_metadata(bare, info))
    shutil.copy(REPO / "android_assets" / "model.tflite", out / "ours_int8.tflite")
    for name in GOOGLE_SEEDS:
        shutil.copy(DATA / name, out / Path(name).name)
    shutil.copy(DATA / "coral" / "cat.bmp", out / "photo.bmp")
    return out


def seed_weights() -> dict[str, int]:
    return {**OUR_SEEDS, **{Path(k).name: w for k, w in GOOGLE_SEEDS.items()}}


# --------------------------------------------------------------------------- mutations (pure)
def structure_spans(data: bytes) -> list[tuple[int, int]]:
    """[start, end) spans of the file that are not weight data: tables, vectors, metadata, zip."""
    from edge.model_file import model_root

    holes = []
    for buffer in model_root(data).tables(4):
        vec = buffer.vector(0, 1)
        if vec is not None and vec[1] > 64:
            holes.append((vec[0], vec[0] + vec[1]))
    spans, pos = [], 8
    for start, end in sorted(holes):
        if start > pos:
            spans.append((pos, start))
        pos = max(pos, end)
    spans.append((pos, len(data)))
    return spans


class Mutator:
    """Seeded damage to one seed model; positions favour the structure over the weights."""

    def __init__(self, data: bytes, spans: list[tuple[int, int]], rng: random.Random):
        self.data, self.spans, self.rng = bytearray(data), spans, rng
        self.total = sum(e - s for s, e in spans)

    def position(self, align: int = 1) -> int:
        rng, n = self.rng, len(self.data)
        if rng.random() < 0.7 and self.total:
            k = rng.randrange(self.total)
            for start, end in self.spans:
                if k < end - start:
                    pos = start + k
                    break
                k -= end - start
        else:
            pos = rng.randrange(n)
        return min(pos - pos % align, max(0, n - 4))

    def truncate(self) -> str:
        cut = self.position() if self.rng.random() < 0.7 else self.rng.randrange(len(self.data))
        del self.data[cut:]
        return f"truncate@{cut}"

    def bitflip(self) -> str:
        flips = [self.position() for _ in range(self.rng.randint(1, 8))]
        for pos in flips:
            self.data[pos] ^= 1 << self.rng.randrange(8)
        return f"bitflip@{flips}"

    def offset(self) -> str:
        pos = self.position(4)
        old = int.from_bytes(self.data[pos:pos + 4], "little")
        value = self.rng.choice([
            self.rng.getrandbits(32), 0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, self.rng.randint(1, 64),
            (old + self.rng.randint(-16, 16)) % 2**32, (len(self.data) - self.rng.randint(0, 64)) % 2**32,
        ])
        self.data[pos:pos + 4] = value.to_bytes(4, "little")
        return f"u32@{pos}={value:#x}"

    def zero(self) -> str:
        pos, size = self.position(), min(int(self.rng.expovariate(1 / 64)) + 1, 4096)
        self.data[pos:pos + size] = bytes(len(self.data[pos:pos + size]))
        return f"zero@{pos}+{size}"

    def junk(self) -> str:
        junk = self.rng.randbytes(self.rng.choice([1, 4, 16, 100, 4096]))
        if self.rng.random() < 0.5:
            self.data[:0] = junk
            return f"prepend{len(junk)}"
        self.data += junk
        return f"append{len(junk)}"

    def zip(self) -> str:
        """Damage the appended labels zip: its bytes, its text, its directory or its length."""
        start = self.data.find(b"PK\x03\x04")
        if start < 0:
            return self.bitflip()
        how = self.rng.choice(["flip", "text", "directory", "cut", "utf8name"])
        if how == "flip":
            for _ in range(self.rng.randint(1, 4)):
                self.data[self.rng.randrange(start, len(self.data))] ^= 1 << self.rng.randrange(8)
        elif how == "text":  # undecodable bytes inside labels.txt (local header is 30 + name)
            name_len = int.from_bytes(self.data[start + 26:start + 28], "little")
            pos = start + 30 + name_len + self.rng.randrange(8)
            self.data[pos:pos + 4] = b"\xff\xfe\xc3\x28"
        elif how == "directory":
            end = self.data.rfind(b"PK\x05\x06")
            pos = self.rng.randrange(max(start, end - 64), len(self.data) - 3)
            self.data[pos:pos + 4] = self.rng.getrandbits(32).to_bytes(4, "little")
        elif how == "cut":
            del self.data[self.rng.randrange(start, len(self.data)):]
        else:  # claim a UTF-8 name and make it invalid UTF-8, in the central directory
            central = self.data.rfind(b"PK\x01\x02")
            if 0 <= central < len(self.data) - 47:
                self.data[central + 8] |= 0x08
                self.data[central + 9] |= 0x08
                self.data[central + 46] = 0xFF
        return f"zip-{how}@{start}"

    def mutate(self) -> str:
        ops = [self.truncate, self.bitflip, self.offset, self.offset, self.zero, self.junk, self.zip]
        count = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 3)
        done = []
        for _ in range(count):
            op = self.rng.choice(ops)
            done.append(op() if len(self.data) >= 64 else self.junk())  # a stub only grows
        return " ".join(done)


def make_mutant(seeds: Path, seed: int, index: int, cache: dict) -> tuple[str, str, bytes]:
    """(seed model name, mutation description, mutant bytes) of mutant ``index``."""
    rng = random.Random(f"{seed}:{index}")
    weights = seed_weights()
    name = rng.choices(list(weights), weights=list(weights.values()))[0]
    if name not in cache:
        data = (seeds / name).read_bytes()
        cache[name] = (data, structure_spans(data))
    data, spans = cache[name]
    mutator = Mutator(data, spans, rng)
    what = mutator.mutate()
    return name, what, bytes(mutator.data)


# --------------------------------------------------------------------------- worker (any venv)
def classify_in_process(model: Path, photo: Path, capture: Path) -> tuple[str, str]:
    """Run `edge classify MODEL PHOTO --json --threads 1` in this process; (outcome, detail).

    fds 1 and 2 go to ``capture`` so the C++ runtime's own prints are judged too."""
    from edge.cli import app

    saved = os.dup(1), os.dup(2)
    with open(capture, "wb") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        rc = app(["classify", str(model), str(photo), "--json", "--threads", "1"], standalone_mode=False)
        escaped = None
    except BaseException as exc:  # the point: anything escaping the CLI is a traceback for a user
        rc, escaped = None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    text = capture.read_text(errors="replace")
    return judge(rc, escaped, text)


def judge(rc, escaped: str | None, text: str) -> tuple[str, str]:
    """Outcome of one classify run from its exit code, escaped exception and output."""
    if escaped is not None or "Traceback" in text:
        return "traceback", escaped or text[-300:]
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("INFO: ", "warning: "))]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if rc in (None, 0) and len(lines) == 1 and lines[0].startswith('{"path"') and '"labels"' in lines[0]:
        return "ok", ""
    if rc == 2 and errors == lines and len(errors) == 1:
        return "error", errors[0][7:200]
    return "bad", f"exit {rc}: {' | '.join(lines)[:300]}"


def _selftest(i: int) -> None:
    """EDGE_FUZZ_SELFTEST="crash:3,hang:5" kills or stalls the worker at those mutants, so the
    tests can prove the parent reports them and goes on."""
    for item in filter(None, os.environ.get("EDGE_FUZZ_SELFTEST", "").split(",")):
        kind, index = item.split(":")
        if int(index) == i:
            if kind == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            time.sleep(3600)


def worker(seeds: Path, seed: int, start: int, stop: int, report) -> None:
    """Classify mutants start..stop-1 in turn, writing a JSON line before and after each."""
    cache: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="worker-"))
    model, capture = tmp / "mutant.tflite", tmp / "output.txt"
    report.write(json.dumps({"event": "ready"}) + "\n")
    report.flush()
    for i in range(start, stop):
        name, what, data = make_mutant(seeds, seed, i, cache)
        model.write_bytes(data)
        report.write(json.dumps({"event": "start", "i": i, "seed_model": name, "mutation": what}) + "\n")
        report.flush()
        _selftest(i)
        outcome, detail = classify_in_process(model, seeds / "photo.bmp", capture)
        report.write(json.dumps({"event": "end", "i": i, "outcome": outcome, "detail": detail}) + "\n")
        report.flush()
    shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- parent (main venv)
@dataclass
class Result:
    i: int
    outcome: str
    detail: str
    seed_model: str = ""
    mutation: str = ""


def backend_command(backend: str) -> tuple[list[str], dict]:
    """The python (and env) that loads models with ``backend``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGE_TRANSFER_BACKEND": backend,
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "ai_edge_litert":
        return [sys.executable], env
    sys.path.insert(0, str(REPO / "tests"))
    from client_venvs import client_python

    return [str(client_python(backend))], env


def _run_chunk(backend: str, seeds: Path, seed: int, start: int, stop: int, timeout: float,
               results: list, lock: threading.Lock, tmp: str) -> None:
    python, env = backend_command(backend)
    env["TMPDIR"] = tmp
    while start < stop:
        proc = subprocess.Popen(
            [*python, str(Path(__file__).resolve()), "worker", str(seeds), str(seed), str(start), str(stop)],
            stdout=subprocess.PIPE, env=env, cwd=REPO, start_new_session=True,
        )
        current, started, deadline = None, {}, time.monotonic() + 120  # first: imports
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buffer = b""
        while True:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                outcome = "hang"
                break
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                outcome = "crash" if current is not None else None
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if msg["event"] == "start":
                    current, started = msg["i"], msg
                    deadline = time.monotonic() + timeout
                elif msg["event"] == "end":
                    with lock:
                        results.append(Result(msg["i"], msg["outcome"], msg["detail"], started.get("seed_model", ""),
                                              started.get("mutation", "")))
                    current = None
        sel.close()
        proc.stdout.close()
        if current is None:
            if outcome == "hang" or proc.returncode:
                raise RuntimeError(f"fuzz worker failed outside a mutant (exit {proc.returncode})")
            return
        detail = f"timeout after {timeout:.0f} s" if outcome == "hang" else f"exit {proc.returncode}"
        if proc.returncode is not None and proc.returncode < 0:
            detail = f"killed by {signal.Signals(-proc.returncode).name}" if outcome == "crash" else detail
        with lock:
            results.append(Result(current, outcome, detail, started.get("seed_model", ""), started.get("mutation", "")))
        start = current + 1


def run_fuzz(backend: str, count: int, seed: int, seeds: Path, jobs: int = 2, timeout: float = 30) -> list[Result]:
    """Mutants 0..count-1 through ``backend``, split over ``jobs`` worker processes."""
    results: list[Result] = []
    lock = threading.Lock()
    bounds = [round(count * k / jobs) for k in range(jobs + 1)]
    with tempfile.TemporaryDirectory(prefix="edge-fuzz-") as tmp:  # workers' scratch, even if killed
        threads = [threading.Thread(target=_run_chunk, args=(backend, seeds, seed, a, b, timeout, results, lock,
                                                             tmp))
                   for a, b in zip(bounds, bounds[1:]) if b > a]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if len(results) != count:
        raise RuntimeError(f"fuzz run lost mutants: {len(results)} results for {count}")
    return sorted(results, key=lambda r: r.i)


def summary(results: list[Result]) -> dict[str, int]:
    return {k: sum(r.outcome == k for r in results) for k in OUTCOMES}


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _seeds, _seed, _start, _stop = sys.argv[2], *map(int, sys.argv[3:6])
    _report = os.fdopen(os.dup(1), "w")
    worker(Path(_seeds), _seed, _start, _stop, _report)
