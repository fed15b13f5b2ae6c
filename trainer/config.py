"""Run configuration: three small dataclasses with working defaults, filled by the CLI and
written back as RUN_DIR/config.json so a run can be repeated exactly."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DataConfig:
    """dir: folder of class folders. val_split/test_split: stratified fractions.
    min_per_class: fewer readable images in any class is an error.
    exclude: photos left out (paths relative to dir; `train --exclude`), exclude_from: what named them."""

    dir: str
    val_split: float = 0.1
    test_split: float = 0.2
    min_per_class: int = 5
    exclude: tuple[str, ...] = ()
    exclude_from: str = ""


@dataclass(frozen=True)
class BackboneConfig:
    """name: "mobilenet_v2", a keras.applications model name, a TF Hub / Kaggle URL, or "hub:PATH".
    weights: "default" (shipped for mobilenet_v2, else imagenet), "imagenet", a file, or "none".
    image_size: square input side. alpha: MobileNetV2 width multiplier (1.0 has shipped weights).
    int8_grid: convolution weights put on the grid int8 rounds them to (trainer.model.int8_grid), so
    the int8 file agrees with the Keras model; keras.applications and mobilenet_v2 only."""

    name: str = "mobilenet_v2"
    weights: str = "default"
    image_size: int = 224
    alpha: float = 1.0
    int8_grid: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """epochs: max L-BFGS iterations of the head (a convex problem: it stops when solved).
    l2_grid: L2 strengths tried for the head; the best validation log-loss wins.
    flip_features: also cache features of mirrored photos (doubles extraction, more data).
    fine_tune_layers / fine_tune_from: stage 2, unfreeze the top N base layers or from a named
    layer (e.g. "block_13_expand"); BatchNorm stays in inference mode.
    fine_tune_schedule: "constant" learning rate, or "cosine": linear warmup over the first epoch,
    then cosine decay to 0 at the last.
    fine_tune_zoom: augmentation crops a random square of down to (1 - zoom) of the side.
    open_set: add the none-of-these class (trainer.fit.open_set): open_set_label names it (the last
    output), open_set_keep is the share of val photos its threshold keeps, open_set_prototypes the
    prototypes per class."""

    epochs: int = 2000
    dropout: float = 0.0
    label_smoothing: float = 0.0
    l2_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    class_weights: bool = True
    flip_features: bool = False
    fine_tune_layers: int = 0
    fine_tune_from: str | None = None
    fine_tune_epochs: int = 6
    fine_tune_learning_rate: float = 1e-5
    fine_tune_schedule: str = "constant"
    fine_tune_zoom: float = 0.15
    fine_tune_patience: int = 2
    fine_tune_batch_size: int = 32
    tensorboard: bool = False
    threads: int = 0
    preset: str = "fast"
    open_set: bool = True
    open_set_label: str = "unknown"
    open_set_keep: float = 0.95
    open_set_prototypes: int = 8


# Named recipes: the TrainConfig fields each sets (explicit flags override them). "fast" is the
# head-only default. "best" fine-tunes from block_10 at lr 1e-4 (warmup + cosine decay) with label
# smoothing 0.1 and dropout 0.2; each lever measured on tf_flowers in benchmarks/bench_quality.py.
PRESETS: dict[str, dict] = {
    "fast": {},
    "best": {"fine_tune_from": "block_10_expand", "fine_tune_epochs": 6, "fine_tune_learning_rate": 1e-4,
             "fine_tune_schedule": "cosine", "dropout": 0.2, "label_smoothing": 0.1},
}


SCHEDULES = ("constant", "cosine")


def train_config(preset: str = "fast", **given) -> TrainConfig:
    """TrainConfig from a preset, then every given value that is not None on top."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    values = {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
    if values.get("fine_tune_schedule", "constant") not in SCHEDULES:
        raise ValueError(f"--fine-tune-schedule must be one of {', '.join(SCHEDULES)}, "
                         f"got {values['fine_tune_schedule']!r}")
    if not 0.0 <= values.get("fine_tune_zoom", 0.15) < 1.0:
        raise ValueError(f"--fine-tune-zoom must be at least 0 and below 1, got {values['fine_tune_zoom']}")
    if not 0.5 <= values.get("open_set_keep", 0.95) < 1.0:
        raise ValueError(f"--open-set-keep must be at least 0.5 and below 1, got {values['open_set_keep']}")
    label = values.get("open_set_label", "unknown")
    if not label.strip() or label != label.strip() or "\n" in label:
        raise ValueError(f"--open-set-label must be a non-blank single line without outer spaces, got {label!r}")
    return TrainConfig(preset=preset, **values)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = set(TrainConfig.__dataclass_fields__)  # older runs' head-optimizer settings are obsolete
        train = {"open_set": False, **{k: v for k, v in d["train"].items() if k in known}}  # older runs had none
        train["l2_grid"] = tuple(train.get("l2_grid", TrainConfig.l2_grid))
        backbone = {"int8_grid": False, **d["backbone"]}  # older runs: trained off the grid, repeated so
        data = {**d["data"], "exclude": tuple(d["data"].get("exclude", ()))}
        return cls(DataConfig(**data), BackboneConfig(**backbone), TrainConfig(**train), d["seed"])
