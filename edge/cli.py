"""`python -m edge` / `et-edge`: classify photos, run a camera loop, benchmark a model.

Only typer is imported at module level so `--help` is instant; numpy, pillow and the
interpreter load inside the command that needs them. Exit codes: 0 ok, 1 some images could
not be read, 2 the model (or labels file, or runtime) is unusable. Errors are one line.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from edge.cli_look import error, new_app

app = new_app("Run a TFLite image classifier on photos or a camera, without TensorFlow.")

EXIT_IMAGE_ERROR = 1
EXIT_MODEL_ERROR = 2
_GLOB_CHARS = set("*?[")
OPEN_SET_WARNING = "no none-of-these class"  # how edge.metadata / edge.classifier end such warnings


def _fail(message: str, code: int = EXIT_MODEL_ERROR) -> typer.Exit:
    return error(message, code)


def expand_inputs(args: list[str]) -> list[str]:
    """Files as given, folders recursively (image extensions, any case, sorted), globs expanded.

    A path that does not exist (or a glob matching nothing) is kept, so it is reported as an
    error for that path instead of silently vanishing.
    """
    from edge.preprocess import list_images

    out: list[str] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            out.extend(str(p) for p in list_images(path))
        elif not path.exists() and _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            out.extend(expand_inputs(matches) if matches else [arg])
        else:
            out.append(arg)
    return out


def load_classifier(options):
    """Build a Classifier, turning every load failure into a one-line exit 2; damaged labels
    in the model are a one-line warning (categories are then named by index), and so is a
    damaged open_set.json (no none-of-these class then)."""
    from edge.classifier import Classifier
    from edge.flatbuffer import InvalidModelError
    from edge.runtime import DelegateError, RuntimeMissingError

    try:
        classifier = Classifier(options)
    except (InvalidModelError, RuntimeMissingError, DelegateError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # the --labels file
        raise _fail(f"cannot read {exc.filename}: {exc.strerror}") from None
    for warning in classifier.warnings:  # with --labels, the model's own labels do not matter
        if options.labels is None or warning.endswith(OPEN_SET_WARNING):
            typer.echo(f"warning: {options.model}: {warning}", err=True)
    return classifier


def format_result(result, as_json: bool) -> str:
    """One output line for a classify Result."""
    from edge.postprocess import result_fields, verdict_text

    if as_json:
        if result.error:
            return json.dumps({"path": result.path, "error": result.error})
        return json.dumps({"path": result.path, **result_fields(result)})
    if result.error:
        return f"{result.path}: error: {result.error}"
    return f"{result.path}: {verdict_text(result, ranked_text(result.categories))}  [{result.inference_ms:.1f} ms]"


def ranked_text(categories) -> str:
    """The ranking part of a classify text line."""
    return ", ".join(f"{c.label} ({c.score:.3f})" for c in categories) or "(nothing above threshold)"


@app.command()
def classify(
    model: Path = typer.Argument(..., help="The .tflite model."),
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="Categories per image (0: all)."),
    threshold: float = typer.Option(
        0.0, "--threshold", "-t",
        help="Minimum score to report; > 0 also overrides the model's own none-of-these decision: "
             "a photo is 'none of these' when no known class scores at least this."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a line."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Interpreter threads (default: all cores)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels file overriding the model's own."),
    allow: list[str] = typer.Option([], "--allow", help="Only report this label (repeatable)."),
    deny: list[str] = typer.Option([], "--deny", help="Never report this label (repeatable)."),
    edgetpu: bool = typer.Option(False, "--edgetpu", help="Use the Edge TPU delegate (libedgetpu)."),
) -> None:
    """Classify photos; one line (or JSON object) per image. Exit 1 if any image failed."""
    from edge.classifier import ClassifierOptions
    from edge.runtime import InferenceError

    options = ClassifierOptions(
        model=model,
        num_threads=threads or os.cpu_count(),
        top_k=top_k,
        threshold=threshold,
        allow=tuple(allow),
        deny=tuple(deny),
        edgetpu=edgetpu,
        labels=labels,
    )
    inputs = expand_inputs(paths)
    if not inputs:
        raise _fail(f"no images found in {' '.join(paths)}", EXIT_IMAGE_ERROR)
    classifier = load_classifier(options)
    failed = False
    try:
        for result in classifier.classify_paths(inputs):
            line = format_result(result, as_json)
            failed |= result.error is not None
            typer.echo(line, err=bool(result.error) and not as_json)
    except InferenceError as exc:
        raise _fail(f"{model}: {exc}") from None
    if failed:
        raise typer.Exit(EXIT_IMAGE_ERROR)


@app.command()
def camera(
    model: Path = typer.Argument(..., help="The .tflite model."),
    source: str = typer.Option("0", "--source", help="Camera index or a video file."),
    headless: bool = typer.Option(False, "--headless", help="Print one line a frame instead of a window."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object a frame on stdout, nothing else (no window)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the annotated frames to this .mp4 (mp4v)."),
    top_k: int = typer.Option(3, "--top-k", "-k", help="Categories per frame."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Interpreter threads (default: all cores)."),
    max_frames: int = typer.Option(0, "--max-frames", help="Stop after N frames (0: until the source ends)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels file overriding the model's own."),
    edgetpu: bool = typer.Option(False, "--edgetpu", help="Use the Edge TPU delegate (libedgetpu)."),
) -> None:
    """Classify camera or video frames live; Ctrl-C (or q in the window) stops."""
    from edge import camera as cam
    from edge.classifier import ClassifierOptions
    from edge.runtime import InferenceError

    options = ClassifierOptions(model=model, num_threads=threads or os.cpu_count(), top_k=top_k, labels=labels,
                                edgetpu=edgetpu)
    classifier = load_classifier(options)
    try:
        frames_in = cam.open_source(source)
        try:
            renderers = cam.make_renderers(headless, as_json, save, source, getattr(frames_in, "fps", 0.0))
        except cam.CameraError:
            frames_in.close()
            raise
        frames = cam.run(classifier, frames_in, max_frames=max_frames, renderers=renderers)
    except cam.CameraError as exc:
        raise _fail(str(exc)) from None
    except InferenceError as exc:
        raise _fail(f"{model}: {exc}") from None
    typer.echo(f"{frames} frames" + (f", saved to {save}" if save is not None and frames else ""), err=True)


@app.command()
def bench(
    model: Path = typer.Argument(..., help="The .tflite model."),
    threads: int = typer.Option(2, "--threads", help="Interpreter threads."),
    runs: int = typer.Option(50, "--runs", help="Timed invocations."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed invocations first."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Time bare interpreter invocations on seeded random input: p50 / p90 ms, images/s."""
    from edge.benchmark import time_invoke
    from edge.flatbuffer import InvalidModelError
    from edge.runtime import InferenceError, RuntimeMissingError, make_interpreter

    try:
        loaded = make_interpreter(model, num_threads=threads)
        timing = time_invoke(loaded, runs=runs, warmup=warmup)
    except (InvalidModelError, RuntimeMissingError) as exc:
        raise _fail(str(exc)) from None
    except InferenceError as exc:
        raise _fail(f"{model}: {exc}") from None
    if as_json:
        typer.echo(json.dumps({"model": str(model), "backend": loaded.backend, "threads": threads, **timing.to_dict()}))
    else:
        typer.echo(
            f"{model.name} [{loaded.backend}, {threads} threads, {runs} runs]: "
            f"p50 {timing.p50_ms:.2f} ms  p90 {timing.p90_ms:.2f} ms  {timing.images_per_s:.1f} images/s"
        )


def main() -> None:
    """Console-script entry point (`et-edge`)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
