"""One training worker for the fine-tuning tests, run as a subprocess (a fresh TensorFlow each):
TF_CONFIG (if any) -> strategy -> model under its scope -> [barrier] -> fine_tune -> weights.

    python tests/fine_tune_worker.py OUT [--epochs N] [--checkpoint DIR] [--barrier] [--train-per-class N]
                                         [--stall RANK:SECONDS] [--skew-head]

Each worker checkpoints to DIR/worker_<rank> (its own folder, as the caller must). Prints
"training" when fine-tuning starts, then the history as one JSON line; writes
OUT/weights_<rank>.npz. A ClusterError is one "error: ..." line and exit 2, as in the CLI.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.paths import SAMPLE_FLOWERS  # noqa: E402
from trainer.fit.cluster import Cluster, ClusterError, barrier, make_strategy  # noqa: E402

SIZE = 96
VAL_PER_CLASS = 2


def sample_photos(spec, train_per_class: int = 8):
    """The first photos of each sample class, split into train and val (deterministic)."""
    from trainer.data.dataset import scan
    from trainer.data.photos import Photos

    classes, samples = scan(SAMPLE_FLOWERS)
    parts: dict[str, list] = {"val": [], "train": []}
    for c in range(len(classes)):
        mine = [s for s in samples if s.label == c]
        parts["val"] += mine[:VAL_PER_CLASS]
        parts["train"] += mine[VAL_PER_CLASS:VAL_PER_CLASS + train_per_class]
    val, train = (Photos(tuple(SAMPLE_FLOWERS / s.path for s in part), np.array([s.label for s in part]), spec)
                  for part in parts.values())
    return len(classes), train, val


def build_model(n_classes: int, seed: int):
    """The shipped MobileNetV2 at SIZE px with a seeded softmax head (as trainer.fit.head.assemble)."""
    import keras

    from trainer.config import BackboneConfig
    from trainer.model.backbones import build_backbone

    backbone = build_backbone(BackboneConfig(image_size=SIZE))
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = backbone.features(inputs, training=False)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed=seed))(x)
    return backbone, keras.Model(inputs, outputs)


def saved(checkpoint: Path, epoch: int, workers: int = 1) -> bool:
    """Every worker's checkpoint of ``epoch`` is committed: CheckpointManager's index file names it
    (written after the checkpoint's files, so a kill before it leaves nothing to resume)."""
    index = list(checkpoint.glob("worker_*/fine_tune-*/checkpoint"))
    return len(index) == workers and all(f'"ckpt-{epoch}"' in p.read_text() for p in index)


def stall_reads(seconds: float, after: int = 10) -> None:
    """Make the photo read number ``after`` (fine_tune decodes through edge.preprocess.prepare) hang."""
    import edge.preprocess

    real, reads = edge.preprocess.prepare, itertools.count()

    def stuck(*args, **kwargs):
        if next(reads) == after:
            time.sleep(seconds)
        return real(*args, **kwargs)

    edge.preprocess.prepare = stuck


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--barrier", action="store_true")
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--skew-head", action="store_true", help="set a different head on each worker after "
                        "building (as a non-deterministic stage 1 would): fine_tune must start all from the chief's")
    parser.add_argument("--stall", default="", help="RANK:SECONDS: that worker's input pipeline hangs (a stuck "
                        "file read) mid-epoch: a live, heartbeating, hung peer")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        cluster = Cluster.from_env()
        strategy = make_strategy(cluster)  # first: before any other TensorFlow op
        import keras

        from edge.preprocess import PreprocessSpec
        from trainer.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
        from trainer.fit.fine_tune import fine_tune, without_optimizer

        cfg = RunConfig(DataConfig(str(SAMPLE_FLOWERS)), BackboneConfig(image_size=SIZE),
                        TrainConfig(fine_tune_from="block_16_expand", fine_tune_epochs=args.epochs,
                                    fine_tune_learning_rate=1e-3, fine_tune_batch_size=8, fine_tune_patience=5,
                                    label_smoothing=0.1), seed=7)
        n_classes, train, val = sample_photos(PreprocessSpec(size=(SIZE, SIZE)), args.train_per_class)
        keras.utils.set_random_seed(cfg.seed)
        with strategy.scope():
            backbone, model = build_model(n_classes, cfg.seed)
        if args.skew_head:
            head = model.get_layer("probabilities")
            head.set_weights([w + 0.01 * cluster.rank for w in head.get_weights()])
        if args.barrier:
            barrier(strategy)
            print(f"barrier passed by worker {cluster.rank}", flush=True)
        if args.stall and int(args.stall.split(":")[0]) == cluster.rank:
            stall_reads(float(args.stall.split(":")[1]))
        print("training", flush=True)
        checkpoint = args.checkpoint / f"worker_{cluster.rank}" if args.checkpoint else None
        history = fine_tune(cfg, backbone, model, train, val, n_classes, strategy, checkpoint_dir=checkpoint,
                            logdir=args.out / "tensorboard")
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    weights = without_optimizer(model).get_weights()
    np.savez(args.out / f"weights_{cluster.rank}.npz", *weights)
    print(json.dumps(history), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
