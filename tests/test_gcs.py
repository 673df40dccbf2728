"""gs:// end to end on a local GCS emulator: every layer, checkpoints, train/kill/resume, eval, infer, convert."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from etils import epath

from glm_jax import checkpoints, paths
from glm_jax.testing import gcs_emulator as emulator_lib

from conftest import REPO_ROOT, free_port, run_module, write_tiny_gin


def test_cli_prints_the_exports_and_every_client_reaches_the_emulator(gcs, tmp_path):
  names = [line.split("=", 1)[0][len("export "):] for line in gcs.exports]
  assert names[:1] == ["TENSORSTORE_GCS_HTTP_URL"]
  for name in ("GOOGLE_AUTH_TOKEN_FOR_TESTING", "https_proxy", "no_proxy", "CURL_CA_BUNDLE",
               "STORAGE_EMULATOR_HOST"):
    assert name in names
  assert gcs.banner.startswith("# GCS emulator on 127.0.0.1:")
  # epath (TensorFlow's gfile through the TLS proxy): write, list, read, rename, delete.
  root = epath.Path(gcs.url("layers"))
  (root / "a").mkdir(parents=True, exist_ok=True)
  (root / "a" / "x.txt").write_text("hello")
  (root / "a" / "x.txt").rename(root / "a" / "y.txt")
  assert [p.name for p in (root / "a").iterdir()] == ["y.txt"]
  assert (root / "a" / "y.txt").read_text() == "hello"
  # tensorstore's own GCS driver (orbax's arrays) sees the same bucket.
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  kv = ts.KvStore.open({"driver": "gcs", "bucket": "glm-test", "path": "layers/"}).result()
  assert kv.read("a/y.txt").result().value == b"hello"
  kv.write("ts.bin", b"\x01\x02").result()
  assert (root / "ts.bin").read_bytes() == b"\x01\x02"
  # TensorBoard's event writer (TensorFlow's gfile) round-trips a scalar.
  from glm_jax import metrics_writer  # pylint: disable=g-import-not-at-top
  writer = metrics_writer.MetricsWriter(str(root / "run"))
  writer.write(3, {"loss": 1.5})
  writer.close()
  assert paths.read_text(root / "run" / "metrics.jsonl") == '{"step": 3, "loss": 1.5}\n'
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(root / "run" / "tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(3, 1.5)]
  # A second emulator on the same root (as after a restart) serves the same objects.
  import urllib.request  # pylint: disable=g-import-not-at-top
  with emulator_lib.GcsEmulator(gcs.root, port=free_port(), proxy_port=free_port()) as again:
    url = (f"http://127.0.0.1:{again.port}/storage/v1/b/glm-test/o/"
           "layers%2Fa%2Fy.txt?alt=media")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    assert opener.open(url, timeout=30).read() == b"hello"


def test_checkpoints_on_gcs_use_orbax_commit_markers(gcs):
  from test_checkpoints import CFG, _assert_same, _manager, _state  # pylint: disable=g-import-not-at-top
  run = epath.Path(gcs.url("markers"))
  manager = _manager(str(run))
  for step in (2, 4):
    manager.save(_state(step), next_batch=step, config=CFG, vocab_spec="builtin")
  manager.close()
  # On GCS orbax marks a finished step with commit_success.txt (no atomic rename).
  assert (run / "4" / "commit_success.txt").exists()
  (run / "4" / "commit_success.txt").unlink()  # as if killed before the commit
  for other in ("tensorboard", "best", "eval"):  # directories without a marker, not steps
    paths.write_text(run / other / "keep.txt", "x")
  assert [r["step"] for r in checkpoints.describe(str(run))] == [2]
  reopened = _manager(str(run))
  assert reopened.all_steps() == [2]
  assert not (run / "4").exists()  # the unfinished step is removed, nothing else
  assert all((run / other / "keep.txt").exists() for other in ("tensorboard", "best", "eval"))
  state, meta = reopened.restore_latest()
  assert meta["step"] == 2
  _assert_same(state, _state(2))
  assert reopened.save(_state(4, seed=1), next_batch=4, config=CFG, vocab_spec="builtin")
  reopened.close()
  params, _, _, step = checkpoints.load_params(str(run))
  assert step == 4
  _assert_same(params, _state(4, seed=1).params)
