"""Paths: etils epath (the abstraction orbax uses), so `gs://` and local paths work alike.

Every path a user gives (MODEL_DIR, CHECKPOINT, OUTPUT_DIR, gin files, prompts, ...) goes
through `resolve`: URLs such as `gs://bucket/run` stay as given, local paths become
absolute. epath reaches `gs://` through TensorFlow's gfile (or fsspec/gcsfs without
TensorFlow); orbax writes arrays through tensorstore's own GCS driver. See
glm_jax/testing/gcs_emulator.py for pointing all of them at a local emulator.
"""

from __future__ import annotations

import json
import os
from typing import Any, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """True for `gs://...` and other URL paths."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """epath.Path of a user path: URLs as given, local paths absolute (`~` expanded)."""
  text = os.fspath(path)
  if is_url(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def read_text(path: PathLike) -> str:
  return resolve(path).read_text()


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` to `path`, creating its parent directories."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def read_json(path: PathLike) -> Any:
  return json.loads(read_text(path))


def write_json(path: PathLike, value: Any, indent: int = 2) -> None:
  write_text(path, json.dumps(value, indent=indent))


def makedirs(path: PathLike) -> epath.Path:
  path = resolve(path)
  path.mkdir(parents=True, exist_ok=True)
  return path
