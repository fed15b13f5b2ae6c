"""`python -m trainer train`: its options, the run configuration they make, and the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from edge.cli_look import error
from trainer.cli.common import (
    _fail,
    _output,
    _quiet_tensorflow,
    _train_config,
    _user_errors,
)


def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Folder with one sub-folder of photos per class."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory to write (model.keras, report.json, "
                                       "...) [a new runs/train, runs/train2, ..., recorded in runs/LAST]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="--out may hold a run: build the new one beside "
                                   "it and swap it in whole at the end (no file of the old model stays)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Repeat a run: its config.json (other options "
                                          "are ignored, except --data, --out, --overwrite and --exclude)."),
    backbone: str = typer.Option("mobilenet_v2", help="mobilenet_v2 | a keras.applications name | a TF Hub or Kaggle model URL | hub:PATH"),
    weights: str = typer.Option("default", help="default | imagenet | PATH | none"),
    image_size: int = typer.Option(224, help="Square input size in pixels."),
    alpha: float = typer.Option(1.0, help="MobileNetV2 width multiplier (the shipped weights are for 1.0)."),
    int8_grid: bool = typer.Option(True, help="Put the backbone's convolution weights on int8's grid, so the "
                                   "int8 file agrees with model.keras (README: int8)."),
    epochs: int = typer.Option(2000, help="Max L-BFGS iterations of the head on cached features."),
    preset: str = typer.Option("fast", help="fast (head only) | best (fine-tunes from block_10_expand, lr 1e-4 "
                               "cosine, dropout 0.2, label smoothing 0.1); the flags below override it."),
    fine_tune_layers: Optional[int] = typer.Option(None, help="Stage 2: unfreeze the top N layers of the base."),
    fine_tune_from: Optional[str] = typer.Option(None, help="Stage 2: unfreeze from this layer, e.g. block_13_expand."),
    fine_tune_epochs: Optional[int] = typer.Option(None, help="Max stage-2 epochs (early stopping on val loss) [6]."),
    fine_tune_learning_rate: Optional[float] = typer.Option(None, help="Stage-2 learning rate (Adam) [1e-5]."),
    fine_tune_schedule: Optional[str] = typer.Option(None, help="Stage-2 learning rate: constant | cosine "
                                                     "(warmup over epoch 1, then cosine decay) [constant]."),
    dropout: Optional[float] = typer.Option(None, help="Dropout before the head while fine-tuning [0.0]."),
    fine_tune_zoom: Optional[float] = typer.Option(None, help="Stage-2 augmentation: random crops down to "
                                                   "(1 - zoom) of the side [0.15]."),
    flip_features: bool = typer.Option(False, help="Also cache features of mirrored photos (augmentation)."),
    label_smoothing: Optional[float] = typer.Option(None, help="[0.0]"),
    seed: int = typer.Option(42),
    val_split: float = typer.Option(0.1),
    test_split: float = typer.Option(0.2),
    min_per_class: int = typer.Option(5, help="Fewer readable photos in a class is an error."),
    tensorboard: bool = typer.Option(False, help="Write TensorBoard logs to RUN_DIR/tensorboard."),
    threads: int = typer.Option(0, help="Threads for feature extraction (0: all cores)."),
    open_set: bool = typer.Option(True, help="Add the none-of-these class: a photo far from every class's "
                                  "prototypes gets the --open-set-label (README: none of these)."),
    open_set_label: str = typer.Option("unknown", help="The none-of-these label (the model's last output)."),
    open_set_keep: float = typer.Option(0.95, help="Its threshold keeps this share of the val photos."),
    exclude: Optional[str] = typer.Option(None, "--exclude", help="Leave photos out: a file of paths (one a "
                                          "line), or DOCTOR.json[:mislabeled,duplicates,outliers,skipped] "
                                          "(recorded in config.json and the model card; no file is touched)."),
):
    """Train on a folder of class folders and write a self-describing run directory."""
    import dataclasses

    from trainer.config import BackboneConfig, DataConfig, RunConfig
    from trainer.fit import signals

    if signals.wanted(sys.argv):  # several workers: this process only supervises (trainer.fit.signals)
        raise typer.Exit(signals.supervise([sys.executable, "-m", "trainer", *sys.argv[1:]]))

    if config is not None:
        try:
            cfg = RunConfig.from_dict(json.loads(config.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _fail(f"cannot read run config {config}: {exc}".splitlines()[0])
        if data is not None:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data)))
    elif data is None:
        _fail("--data DIR is required (or --config RUN_DIR/config.json to repeat a run)")
    else:
        cfg = RunConfig(
            data=DataConfig(str(data), val_split, test_split, min_per_class),
            backbone=BackboneConfig(backbone, weights, image_size, alpha, int8_grid),
            train=_train_config(preset, epochs=epochs, fine_tune_layers=fine_tune_layers,
                                fine_tune_from=fine_tune_from, fine_tune_epochs=fine_tune_epochs,
                                fine_tune_learning_rate=fine_tune_learning_rate,
                                fine_tune_schedule=fine_tune_schedule, dropout=dropout,
                                fine_tune_zoom=fine_tune_zoom, flip_features=flip_features,
                                label_smoothing=label_smoothing, tensorboard=tensorboard, threads=threads,
                                open_set=open_set, open_set_label=open_set_label, open_set_keep=open_set_keep),
            seed=seed,
        )
    if exclude is not None:
        cfg = _with_exclude(cfg, exclude)
    signals.start()  # a supervised training process: SIGTERM stops it (Stopped), it reports its stage
    target = None
    try:
        target = _output(out, overwrite)
        _quiet_tensorflow()
        from trainer.fit import stages as training

        report = training.run(cfg, target)
    except BaseException as exc:
        stopped = signals.requested()  # SIGTERM in a supervised training process: whatever it raised
        if stopped is None and not isinstance(exc, _user_errors()):
            raise
        if target is not None:
            target.abandon()
        if stopped is not None:  # the supervisor prints the line
            signals.exit_now(128 + stopped)
        if signals.supervised():  # the line stays the last: no TensorFlow teardown (its agent's errors)
            error(str(exc))
            signals.exit_now(2)
        _fail(str(exc))
    if report is None:  # a worker other than the chief: its share is done, the chief writes RUN_DIR
        typer.echo("worker done: the chief (worker 0) writes the run directory")
        return
    test = report["splits"]["test"]
    typer.echo(f"test accuracy {test['accuracy']} on {test['n']} photos; skipped {len(report['skipped'])} files; "
               f"{report['timings']['total_s']:.1f} s; wrote {target.final}" + (", recorded in runs/LAST" if target.named else ""))


def _with_exclude(cfg, spec: str):
    """--exclude: the photos it names, as paths relative to the data folder (config.json keeps them)."""
    import dataclasses

    from trainer.data import exclude as excluding

    try:
        inside, warning = excluding.resolve(spec, cfg.data.dir)
    except _user_errors() as exc:
        _fail(str(exc))
    if warning:
        typer.echo(warning, err=True)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, exclude=tuple(inside), exclude_from=spec))
