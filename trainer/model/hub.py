"""TF Hub / Kaggle model handles -> a SavedModel folder, in tensorflow_hub's own cache layout.

A handle such as https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4 or
https://www.kaggle.com/models/google/mobilenet-v2/TensorFlow2/tf2-preview-feature-vector/4 lives
in ``$TFHUB_CACHE_DIR/<sha1 of the handle string>/`` (``<tmp>/tfhub_modules`` when the variable
is unset), exactly where ``tensorflow_hub`` (compressed_module_resolver.py, 0.16) puts it: the
handle is hashed as typed, with no normalization, so a tfhub.dev handle and its Kaggle twin are
two cache entries. A cache filled on a connected machine therefore works here offline.

Why not the tensorflow-hub package: it requires tf-keras, which requires the full `tensorflow`
wheel beside tensorflow-cpu (`pip install --dry-run tensorflow-hub` would install
tensorflow-2.21.0, tf_keras-2.21.0), and its KerasLayer is a Keras 2 layer that Keras 3 models
reject. Its cache layout is a documented contract, so this module implements it (~100 lines).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DOWNLOAD_TIMEOUT_S = 60


class HubError(ValueError):
    """A handle that cannot be resolved; trainer.model.backbones reports it as a BackboneError."""


def is_handle(name: str) -> bool:
    """A model handle (tfhub.dev, Kaggle, any http(s) URL of a SavedModel tarball)."""
    return name.startswith(("https://", "http://"))


def cache_dir() -> Path:
    """tensorflow_hub's cache root: $TFHUB_CACHE_DIR, else <system temp>/tfhub_modules."""
    return Path(os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules"))


def module_dir(handle: str) -> Path:
    """Where tensorflow_hub keeps (and we look for) the extracted SavedModel of a handle."""
    return cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _cached(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())  # tensorflow_hub's own test: exists and not empty


def resolve(handle: str) -> Path:
    """The local SavedModel folder of a handle: from the cache, else downloaded into it.

    Raises HubError with the exact folder to fill when the model is neither cached nor
    downloadable (no network)."""
    target = module_dir(handle)
    if not _cached(target):
        try:
            download(handle, target)
        except (OSError, tarfile.TarError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise HubError(
                f"TF Hub model {handle} is not in the cache and cannot be downloaded ({reason}); put its "
                f"extracted SavedModel (saved_model.pb, variables/) in {target}/ (tensorflow_hub's cache: "
                f"$TFHUB_CACHE_DIR, else {Path(tempfile.gettempdir()) / 'tfhub_modules'}; the folder name is the "
                "sha1 of the handle), e.g. by loading the handle once with tensorflow_hub on a connected machine "
                "with the same TFHUB_CACHE_DIR"
            ) from None
    if not (target / "saved_model.pb").is_file():
        raise HubError(f"{target} (cache of {handle}) has no saved_model.pb: not a TF2 SavedModel")
    return target


def download(handle: str, target: Path) -> Path:
    """Fetch ``handle?tf-hub-format=compressed`` (a .tar.gz, as tfhub.dev and Kaggle serve it)
    into a temp folder beside ``target``, then rename it into place, as tensorflow_hub does."""
    parts = urllib.parse.urlparse(handle)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), ("tf-hub-format", "compressed")])
    url = urllib.parse.urlunparse(parts._replace(query=query))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            with tarfile.open(fileobj=response, mode="r|*") as archive:
                archive.extractall(tmp, filter="data")
        if not (tmp / "saved_model.pb").is_file():
            raise ValueError(f"the archive at {url} holds no saved_model.pb")
        descriptor = (f"Module: {handle}\nDownload Time: {datetime.datetime.today()}\n"
                      f"Downloader Hostname: {socket.gethostname()} (PID:{os.getpid()})")
        Path(f"{target}.descriptor.txt").write_text(descriptor)
        if target.exists() and not _cached(target):
            target.rmdir()
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cached(target):  # another process won the race: its copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
