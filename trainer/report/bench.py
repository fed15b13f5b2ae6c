"""One table for every TFLite variant of a run: status, size, accuracy, latency -> bench.{md,json}.

`python -m trainer bench RUN_DIR [--threads 1,2] [--runs 50] [--warmup 5]`, in the manner of
Ultralytics' benchmark: one row per variant of the converter's mode table
(:data:`trainer.export.variants.MODES`), in its order, plus model.keras as the reference line.

status     how far the file got: missing (no file) < invalid (the runtime rejects it) < exported
           (loads, but breaks its mode's promises) < verified (dtypes/quantization/ops as promised)
           < parity passed | parity FAILED (parity.json's gate for this very file, by sha256;
           an entry for another file is "stale" and ignored). A parity.json made for another
           model.keras is refused (one line, exit 2): its variants are that model's.
accuracy   top-1 on the held-out split and the change vs Keras, from parity.json (the numbers
           of the edge runtime on real photos); this command does not re-measure them.
latency    bare set_tensor + invoke through the edge runtime (edge.benchmark.time_invoke, the
           one benchmark core): seeded random input, fixed warmup and timed counts, per thread count;
           p50 / p90 ms and images/s (1000 / mean ms). The machine may be shared: compare rows
           of one table, not tables of different machines.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.benchmark import size_mb, time_invoke
from edge.flatbuffer import InvalidModelError
from edge.runtime import RuntimeMissingError, load_backend, make_interpreter
from trainer import atomic
from trainer.data.dataset import DataError
from trainer.export.variants import MODES, verify
from trainer.run_dir import BENCH_JSON, BENCH_MD, MODEL, ParityFile, RunDir, sha256_bytes

DEFAULT_THREADS = (1, 2)
DEFAULT_RUNS = 50
DEFAULT_WARMUP = 5
MISSING, INVALID, EXPORTED, VERIFIED = "missing", "invalid", "exported", "verified"
PASSED, FAILED = "parity passed", "parity FAILED"


@dataclass
class Row:
    """One variant's line of the table."""

    variant: str
    file: str
    status: str
    size_mb: float | None = None
    size_bytes: int | None = None
    input_dtype: str | None = None
    accuracy: float | None = None
    delta_acc: float | None = None
    agreement: float | None = None
    parity_passed: bool | None = None
    backend: str | None = None
    latency: dict[str, dict] = field(default_factory=dict)  # str(threads) -> edge.benchmark.Timing.to_dict()
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchReport:
    run_dir: str
    settings: dict
    machine: dict
    keras: dict
    rows: list[Row]
    created_at: str

    def to_dict(self) -> dict:
        return {"run_dir": self.run_dir, "created_at": self.created_at, "settings": self.settings,
                "machine": self.machine, "keras": self.keras, "variants": [asdict(r) for r in self.rows]}

    def markdown(self) -> str:
        threads = self.settings["threads"]
        head = ["variant", "status", "size MB", "accuracy", "Δ vs Keras (pt)", "agree %"]
        for t in threads:
            head += [f"p50 ms {t}T", f"p90 ms {t}T", f"img/s {t}T"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        k = self.keras
        keras_row = ["keras (reference)", "missing" if k.get("size_mb") is None else "reference",
                     _f(k.get("size_mb"), "{:.2f}"), _f(k.get("accuracy"), "{:.4f}"), "0.00", "100.00"]
        lines.append("| " + " | ".join(keras_row + ["-"] * 3 * len(threads)) + " |")
        for r in self.rows:
            cells = [r.variant, r.status + (f" ({'; '.join(r.notes)})" if r.notes else ""),
                     _f(r.size_mb, "{:.2f}"), _f(r.accuracy, "{:.4f}"), _f(r.delta_acc, "{:+.2f}"),
                     _f(r.agreement, "{:.2f}")]
            for t in threads:
                lat = r.latency.get(str(t))
                cells += [_f(lat and lat["p50_ms"], "{:.2f}"), _f(lat and lat["p90_ms"], "{:.2f}"),
                          _f(lat and lat["images_per_s"], "{:.1f}")]
            lines.append("| " + " | ".join(cells) + " |")
        s = self.settings
        title = (f"Benchmark of {self.run_dir}: {s['runs']} timed invokes after {s['warmup']} warmup, seeded random "
                 f"input, threads {', '.join(map(str, threads))}; {self.machine['backend'] or 'no runtime'} on "
                 f"{self.machine['cpu_count']} CPUs ({self.machine['machine']}). Accuracy: parity.json "
                 f"({self.keras.get('parity_n')} {self.keras.get('parity_split')} photos).")
        return title + "\n\n" + "\n".join(lines) + "\n"


def _f(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def parse_threads(text: str) -> list[int]:
    """'1,2' -> [1, 2]; anything else is a user error."""
    try:
        threads = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or any(t < 1 for t in threads):
        raise DataError(f"--threads must be positive integers separated by commas, e.g. 1,2; got {text!r}")
    return list(dict.fromkeys(threads))


def bench_variant(run: RunDir, mode: str, parity: ParityFile, threads: list[int], runs: int, warmup: int,
                  seed: int = 0) -> Row:
    """Status, size, parity numbers and invoke latency of one variant; never raises for a bad file."""
    path = run.variant(mode)
    row = Row(mode, path.name, MISSING)
    if not path.is_file():
        return row
    data = path.read_bytes()
    row.size_bytes, row.size_mb = len(data), size_mb(len(data))
    try:
        check = verify(data, MODES[mode]) if mode in MODES else None
    except (InvalidModelError, RuntimeMissingError, ValueError) as exc:
        row.status, row.notes = INVALID, [" ".join(str(exc).split())[:160]]
        return row
    row.input_dtype = check.input_dtype if check else None
    row.status = VERIFIED if check is None or check.ok else EXPORTED
    if check is not None and not check.ok:
        row.notes.append("; ".join(check.problems))

    stale = parity.staleness(mode, sha256_bytes(data))
    if stale is None:
        entry = parity.entry(mode)
        row.accuracy, row.delta_acc, row.agreement = entry.get("accuracy"), entry.get("delta_acc"), entry.get("agreement")
        row.parity_passed = bool(entry.get("passed"))
        if row.status == VERIFIED:
            row.status = PASSED if row.parity_passed else FAILED
    else:
        row.notes.append(stale)

    for t in threads:
        loaded = make_interpreter(data, num_threads=t)
        row.backend = loaded.backend
        row.latency[str(t)] = {"threads": t, **time_invoke(loaded, runs=runs, warmup=warmup, seed=seed).to_dict()}
        del loaded
    return row


def run(run_dir: str | Path, threads: list[int] | tuple[int, ...] = DEFAULT_THREADS, runs: int = DEFAULT_RUNS,
        warmup: int = DEFAULT_WARMUP, seed: int = 0, log=None) -> BenchReport:
    """Benchmark every variant of the mode table (missing files are rows, not errors)."""
    if runs < 1 or warmup < 0:
        raise DataError(f"--runs must be >= 1 and --warmup >= 0, got {runs} and {warmup}")
    run = RunDir.open(run_dir, require=())
    run.refuse_foreign_parity()  # another model's accuracy is never shown as this one's
    threads = list(threads)
    parity = run.parity()
    rows = []
    for mode in MODES:
        row = bench_variant(run, mode, parity, threads, runs, warmup, seed)
        rows.append(row)
        if log:
            lat = ", ".join(f"{t}T p50 {row.latency[str(t)]['p50_ms']:.2f} ms" for t in threads if str(t) in row.latency)
            log(f"{mode}: {row.status}" + (f", {lat}" if lat else ""))
    keras_path = run / MODEL
    keras = {"file": keras_path.name,
             "size_mb": size_mb(keras_path.stat().st_size) if keras_path.is_file() else None,
             "sha256": run.model_digest if keras_path.is_file() else None,  # `trainer check`: which model
             "accuracy": parity.data.get("keras_accuracy"), "parity_split": parity.data.get("split"),
             "parity_n": parity.data.get("n")}
    try:
        backend = load_backend().name
    except RuntimeMissingError:
        backend = None
    machine = {"backend": backend, "machine": platform.machine(), "system": platform.system(),
               "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
               "python": platform.python_version()}
    settings = {"threads": threads, "runs": runs, "warmup": warmup, "seed": seed,
                "input": "seeded uniform random tensor of the model's input shape and dtype",
                "timed": "set_tensor + invoke"}
    return BenchReport(str(run.path), settings, machine, keras, rows,
                       _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def write(run_dir: str | Path, report: BenchReport) -> tuple[Path, Path]:
    """RUN_DIR/bench.md and RUN_DIR/bench.json, each written atomically."""
    run_dir = Path(run_dir)
    md = atomic.write_text(run_dir / BENCH_MD, report.markdown())
    js = atomic.write_json(run_dir / BENCH_JSON, report.to_dict())
    return md, js
