"""`python -m trainer`: train, doctor, evaluate, convert, android, web, bench, check, cache.

TensorFlow is imported inside the commands, so `--help` answers at once. User errors (bad
data, bad backbone, bad run directory) print one line and exit with code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edge.cli_look import new_app
from trainer.cli.common import _fail, _quiet_tensorflow, _user_errors
from trainer.cli.train import train

app = new_app("Train a photo classifier offline and export it to TFLite.")
app.command()(train)


@app.command()
def doctor(
    data: list[str] = typer.Argument(..., metavar="DATA", help="Folder(s) of class folders (several, e.g. "
                                     "train/ and test/: twins across them too)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for doctor.json and doctor.html "
                                       "[a new runs/doctor, runs/doctor2, ...]."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as one JSON object on stdout."),
    config: Optional[Path] = typer.Option(None, "--config", help="A run's config.json: check with its backbone "
                                          "(a folder it trained on costs no backbone pass)."),
    backbone: str = typer.Option("mobilenet_v2", help="As train's (ignored with --config)."),
    image_size: int = typer.Option(224, help="As train's (ignored with --config)."),
    seeds: int = typer.Option(3, help="Fold seeds of the k-fold label check."),
):
    """Find the photos that look mislabeled, the twins (exact and near, across classes and
    folders), the photos of no class and the unreadable files; writes doctor.json and a contact
    sheet, doctor.html. One backbone pass through the feature cache; never touches a photo."""
    _quiet_tensorflow()
    from trainer.doctor import examine

    try:
        found, where = examine.run(data, out, examine.backbone_of(config, backbone, image_size), seeds)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(json.dumps(found) if as_json else examine.summary_line(found, where))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A training run directory."),
    data: Path = typer.Option(..., "--data", help="Folder of class folders, named like the run's labels."),
):
    """Evaluate the run's model.keras on any folder; prints one JSON object."""
    _quiet_tensorflow()
    from trainer.report import evaluate as evaluation

    try:
        result = evaluation.evaluate_folder(run_dir, data)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(json.dumps(result))


@app.command()
def convert(
    run_dir: Path = typer.Argument(..., help="A training run directory (model.keras, splits.json, ...)."),
    mode: str = typer.Option("all", help="float32 | float16 | dynamic | int8 | full_int8 | all"),
    calibration_images: int = typer.Option(300, help="int8, full_int8: training photos to calibrate on "
                                           "(class-balanced, seeded)."),
    int8_float_layers: Optional[int] = typer.Option(None, help="int8: keep up to this many convolutions in float, "
                                                    "chosen greedily by how much each lowers the logit error on "
                                                    "the val photos [0 for a model on the int8 grid, else 6]."),
    float32_max_dp: Optional[float] = typer.Option(None, help="Gate: max |p_tflite - p_keras| of float32 [1e-4]."),
    float16_max_dp: Optional[float] = typer.Option(None, help="Gate: max |p_tflite - p_keras| of float16 [0.05]."),
    min_delta_acc: Optional[float] = typer.Option(None, help="Tolerance of every quantized variant: accuracy change "
                                                  "vs Keras, points [int8 -0.3; dynamic, full_int8 -1]; fails only "
                                                  "when the photos show a breach at 95 % (McNemar)."),
    min_agreement: Optional[float] = typer.Option(None, help="Tolerance of every quantized variant: % of photos "
                                                  "with Keras' top-1 [int8 99; dynamic, full_int8 97]; fails only "
                                                  "when the photos show a breach at 95 % (binomial)."),
    author: str = typer.Option("edge-transfer", help="Metadata author."),
    license: str = typer.Option("Apache-2.0", help="Metadata license."),
    seed: int = typer.Option(0, help="Seed of the calibration photo choice."),
    threads: int = typer.Option(0, help="Interpreter threads for the parity check (0: all cores)."),
):
    """Export model_<mode>.tflite files with metadata, check them against model.keras (parity.json,
    exit 1 when the photos show a variant worse than its tolerances) and write the model card."""
    _quiet_tensorflow()
    from trainer.export.tflite import ConversionError
    from trainer.export.variants import resolve_modes
    from trainer.report.parity import default_thresholds
    from trainer.workflow import convert_run

    try:
        report = convert_run(
            run_dir, resolve_modes(mode), calibration_images,
            default_thresholds(float32_max_dp, float16_max_dp, min_delta_acc, min_agreement),
            seed=seed, threads=threads or None, author=author, license=license, log=typer.echo,
            float_layers=int8_float_layers)
    except _user_errors() as exc:
        _fail(str(exc))
    except ConversionError as exc:
        _fail(str(exc), 1)
    typer.echo(report.table())
    for line in report.warnings():
        typer.echo(line, err=True)
    if not report.passed:
        _fail("parity gate failed: " + ", ".join(v.mode for v in report.variants if not v.passed), 1)


@app.command()
def android(
    run_dir: Path = typer.Argument(..., help="A converted run directory (model_<variant>.tflite, parity.json)."),
    variant: str = typer.Option("int8", help="float32 | float16 | dynamic | int8 | full_int8: the file to ship."),
    out: Path = typer.Option(Path("android_assets"), "--out", help="Folder to (re)fill: model.tflite, labels.txt, "
                             "manifest.json, README.md."),
):
    """Fill the Android assets folder with one checked variant (metadata, labels, passed parity gate).
    Refuses with exit 2, leaving the folder as it was, when any check fails."""
    from trainer.ship import android as bundling

    try:
        plan = bundling.build(run_dir, variant, out)
    except _user_errors() as exc:
        _fail(str(exc))
    m = plan.manifest
    typer.echo(f"wrote {out}/: {bundling.MODEL_FILE} ({m['variant']}, {m['model']['size_mb']} MB, "
               f"{m['input']['dtype']} input, accuracy {m['parity']['accuracy']}, agreement {m['parity']['agreement']}%), "
               f"{bundling.LABELS_FILE} ({m['labels']['count']} labels), {bundling.MANIFEST_FILE}, {bundling.README_FILE}")


@app.command()
def web(
    run_dir: Path = typer.Argument(..., help="A converted run directory (model_<variant>.tflite, parity.json)."),
    variant: str = typer.Option("int8", help="float32 | float16 | dynamic | int8 | full_int8: the file to publish."),
    out: Path = typer.Option(..., "--out", help="Folder to (re)fill: index.html, the JS, model.tflite, LiteRT.js."),
    runtime: Optional[Path] = typer.Option(None, help="A node_modules/@litertjs folder (default: web/node_modules/"
                                           "@litertjs, filled by `make web-runtime`)."),
):
    """A static web folder that classifies photos in the browser with one checked variant
    (LiteRT.js, no server code, no outside request: docs/web.md). Refuses with exit 2, leaving the
    folder as it was, when any check fails."""
    from trainer.ship import web as publishing

    try:
        plan, manifest = publishing.build(run_dir, variant, out, runtime)
    except _user_errors() as exc:
        _fail(str(exc))
    m, mb = plan.manifest, manifest["total_bytes"] / 1e6
    typer.echo(f"wrote {out}/: index.html, {publishing.MODEL_FILE} ({m['variant']}, {m['model']['size_mb']} MB, "
               f"{m['input']['dtype']} input, {m['labels']['count']} labels in its metadata), LiteRT.js "
               f"{plan.runtime.version}, {len(manifest['files']) + 1} files, {mb:.1f} MB; "
               f"try it: python -m http.server -d {out} -b 127.0.0.1")


@app.command()
def bench(
    run_dir: Path = typer.Argument(..., help="A converted run directory."),
    threads: str = typer.Option("1,2", help="Interpreter thread counts, comma-separated."),
    runs: int = typer.Option(50, help="Timed invocations per variant and thread count."),
    warmup: int = typer.Option(5, help="Untimed invocations first."),
    seed: int = typer.Option(0, help="Seed of the random input tensor."),
):
    """One table for every variant: status, size, accuracy, delta vs Keras, p50/p90 invoke ms and
    images/s per thread count, through the edge runtime. Writes RUN_DIR/bench.md and bench.json."""
    from trainer.report import bench as benchmarking
    from trainer.report import page

    try:
        report = benchmarking.run(run_dir, benchmarking.parse_threads(threads), runs, warmup, seed)
        md, js = benchmarking.write(run_dir, report)
    except _user_errors() as exc:
        _fail(str(exc))
    page.refresh(run_dir)
    typer.echo(report.markdown())
    typer.echo(f"wrote {md} and {js.name}")


@app.command()
def check(run_dir: Path = typer.Argument(..., help="A training run directory.")):
    """One line per file of the run: ok, stale (made for another model.keras, or not checked
    against this one) or missing. Exit 0 when every file present belongs to model.keras, else 2."""
    from trainer.export.variants import MODES
    from trainer.run_dir import MISSING, RunDir, check_files

    try:
        run = RunDir.open(run_dir, require=())
    except _user_errors() as exc:
        _fail(str(exc))
    states = check_files(run, MODES)
    for s in states:
        typer.echo(f"{s.state:<8} {s.name}" + (f"  {s.note}" if s.note else ""))
    missing = [s.name for s in states if s.bad and s.state == MISSING]
    stale = [s.name for s in states if s.bad and s.state != MISSING]
    if missing:
        _fail(f"{run_dir} is not a complete training run: {', '.join(missing)} missing")
    if stale:
        _fail(f"{run_dir}: {', '.join(stale)} do not belong to its model.keras: "
              f"run `python -m trainer convert {run_dir}` again")


cache_app = new_app("The persistent feature cache (EDGE_TRANSFER_CACHE, "
                    "default ~/.cache/edge-transfer), shared by every run.")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info():
    """Where the cache is, how many feature entries it holds and their size."""
    from trainer.data.feature_cache import FeatureCache

    for line in FeatureCache.default().info().lines():
        typer.echo(line)


@cache_app.command("clear")
def cache_clear():
    """Delete every cached feature and feature extractor (the next run extracts again)."""
    from trainer.data.feature_cache import FeatureCache

    before = FeatureCache.default().clear()
    typer.echo(f"removed {before.entries} feature entries ({before.bytes / 1e6:.1f} MB) and "
               f"{before.extractors} extractors from {before.root}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
