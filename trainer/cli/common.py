"""What every trainer command shares: one-line user errors, the quiet TensorFlow, where train writes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edge.cli_look import error


def _fail(message: str, code: int = 2):
    raise error(message, code)


def _user_errors():
    """Exception types that mean 'the user asked for something impossible', not a bug."""
    from trainer.data.dataset import DataError
    from trainer.fit.cluster import ClusterError
    from trainer.model.backbones import BackboneError

    return (DataError, BackboneError, ClusterError, FileNotFoundError)


def _train_config(preset: str, **given):
    from trainer.config import train_config

    try:
        return train_config(preset, **given)
    except ValueError as exc:
        _fail(str(exc))


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _output(out: Optional[Path], overwrite: bool):
    """Where `train` writes, checked before TensorFlow loads: a run in --out is refused without
    --overwrite; no --out is a new runs/<name>."""
    from trainer.fit.cluster import Cluster
    from trainer.run_dir import Output

    try:
        cluster = Cluster.from_env()
        return Output.choose(out, overwrite, cluster.workers, cluster.is_chief, log=typer.echo)
    except _user_errors() as exc:
        _fail(str(exc))
