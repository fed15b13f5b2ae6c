"""Commands that chain the layers below: `convert` = export + parity gate + model card + page.

The CLI parses arguments and prints; everything a command does in order lives here, so tests
and scripts run the same sequence the CLI runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from trainer.data.dataset import DataError
from trainer.export.calibration import DEFAULT_CALIBRATION_IMAGES
from trainer.export.convert import export
from trainer.model.model_io import load_keras
from trainer.report import model_card, page, parity
from trainer.run_dir import MODEL, RunDir


def convert_run(run_dir: str | Path, modes: list[str], calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
                thresholds: dict | None = None, seed: int = 0, threads: int | None = None,
                author: str = "edge-transfer", license: str = "Apache-2.0",
                log: Callable[[str], None] = print, float_layers: int | None = None) -> parity.ParityReport:
    """Export the variants, gate them on parity, write the model card. Returns the ParityReport
    of this invocation's variants (its ``passed`` is the gate)."""
    run = RunDir.open(run_dir)  # a bad RUN_DIR fails here, before TensorFlow loads
    if float_layers is not None and float_layers < 0:
        raise DataError(f"--int8-float-layers must be >= 0, got {float_layers}")
    for stale in run.clean_stale_temps():
        log(f"removed {stale.name} (left by a run that was killed)")
    foreign = run.clear_foreign()  # variants of an older model.keras: all of them go, not only those redone
    if foreign:
        log(f"removed {', '.join(foreign)}: made for another model.keras")
    model = load_keras(run / MODEL)
    export(run.path, modes, calibration_count, seed, author, license, keras_model=model, log=log,
           float_layers=float_layers)
    t0 = time.perf_counter()
    report = parity.check(run.path, modes, thresholds or parity.default_thresholds(), keras_model=model,
                          threads=threads)
    log(f"wrote {parity.write(run.path, report)} ({time.perf_counter() - t0:.1f} s)")
    md, js = model_card.write(run.path)
    log(f"wrote {md} and {js.name}")
    page.refresh(run.path)  # also when the gate failed: the page shows which variant and why
    return report
