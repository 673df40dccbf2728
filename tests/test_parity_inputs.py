"""`python -m glm_jax.parity inputs`: our task code reproduces the reference's model inputs.

Every field of every shipped example of the 26 glm_protocol tasks (tests/fixtures/glm_protocol,
a subset of ../shared/fixtures/glm_protocol) must equal the reference's arrays exactly; the
full set in ../shared, where present, runs as extra cases.
"""

import json
import lzma
import os

import numpy as np
import pytest

from glm_jax.parity import inputs as parity_inputs

from conftest import run_module, shared_fixture, shipped_fixture

SHIPPED = shipped_fixture("glm_protocol")
SHARED = shared_fixture("glm_protocol")
TASKS = sorted(json.load(open(os.path.join(SHIPPED, "manifest.json")))["tasks"])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The whole source files the WikiText and ReCoRD-training examples need, unpacked."""
  root = tmp_path_factory.mktemp("protocol_data")
  for folder, _, files in os.walk(os.path.join(SHIPPED, "data")):
    for name in files:
      relative = os.path.relpath(os.path.join(folder, name), os.path.join(SHIPPED, "data"))
      target = root / relative[:-len(".xz")]
      target.parent.mkdir(parents=True, exist_ok=True)
      with lzma.open(os.path.join(folder, name)) as f:
        target.write_bytes(f.read())
  return str(root)


@pytest.fixture(scope="module")
def vocabularies(vocab_paths):
  return parity_inputs.Vocabularies(f"wordpiece:{vocab_paths['wordpiece']}")


def _check(fixture_dir, task, vocabularies, roots):
  manifest = parity_inputs.read_manifest(fixture_dir)
  ours = parity_inputs.build_task(fixture_dir, task, manifest["tasks"][task], vocabularies,
                                  roots)
  equal, total, bad = parity_inputs.compare(
      ours, os.path.join(fixture_dir, f"{task}.expected.npz"))
  assert (equal, bad) == (total, []), f"{task}: {total - equal} of {total} differ: {bad}"
  return total


@pytest.mark.parametrize("task", TASKS)
def test_shipped_examples_equal_the_reference(task, vocabularies, data_dir):
  from etils import epath  # pylint: disable=g-import-not-at-top
  assert _check(SHIPPED, task, vocabularies, [epath.Path(data_dir)]) >= 3


@pytest.mark.skipif(SHARED is None, reason="../shared/fixtures/glm_protocol is not present")
@pytest.mark.parametrize("task", TASKS)
def test_full_shared_set_equals_the_reference(task, vocabularies):
  roots = parity_inputs.data_roots(SHARED, None)  # ../shared/data beside the fixtures
  assert _check(SHARED, task, vocabularies, roots) >= 16


def test_task_mask_vocabulary_is_derived_from_the_spec(vocab_paths):
  spec = f"wordpiece:{vocab_paths['wordpiece']}"
  assert parity_inputs.task_mask_spec(spec, True) == spec + "@task_mask"
  assert parity_inputs.task_mask_spec(spec + "@task_mask", False).endswith("@finetune_eval")
  assert parity_inputs.task_mask_spec(spec, False) == spec


def test_xsum_rouge_references_are_the_references_strings(vocab_paths):
  """The ROUGE reference of each summary is decode(encode(summary)), as the manifest's `ref`."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.lm_eval import xsum  # pylint: disable=g-import-not-at-top
  vocabulary = vocab_lib.get_vocabulary(f"wordpiece:{vocab_paths['wordpiece']}")
  manifest = parity_inputs.read_manifest(SHIPPED)
  records = parity_inputs.read_records(SHIPPED, "xsum_generate")
  examples = manifest["tasks"]["xsum_generate"]["examples"]
  for record, example in zip(records, examples):
    summary = xsum.join_lines(record["summary"])
    assert summary == example["target_text"]
    assert vocabulary.decode(vocabulary.encode(summary)) == example["ref"]


def _copy_tasks(tmp_path, tasks):
  fixture = tmp_path / "fixture"
  fixture.mkdir()
  manifest = json.load(open(os.path.join(SHIPPED, "manifest.json")))
  manifest["tasks"] = {t: manifest["tasks"][t] for t in tasks}
  (fixture / "manifest.json").write_text(json.dumps(manifest))
  for t in tasks:
    for suffix in (".inputs.jsonl", ".expected.npz"):
      (fixture / (t + suffix)).write_bytes(open(os.path.join(SHIPPED, t + suffix), "rb").read())
  return fixture


@pytest.mark.slow
def test_cli_writes_the_expected_keys_and_reports_differences(tmp_path, vocab_paths, data_dir):
  tasks = ["lambada_uni_task_mask", "rte", "wikitext_seq512"]
  fixture = _copy_tasks(tmp_path, tasks)
  args = [f"--fixture_dir={fixture}", f"--output_dir={tmp_path / 'out'}",
          f"--vocabulary=wordpiece:{vocab_paths['wordpiece']}", f"--data_dir={data_dir}"]
  ok = run_module("glm_jax.parity", ["inputs", *args])
  assert ok.returncode == 0, ok.stderr[-2000:]
  for task in tasks:
    assert f"{task}" in ok.stdout and "DIFFERS" not in ok.stdout
    with np.load(tmp_path / "out" / f"{task}.npz") as ours, np.load(
        fixture / f"{task}.expected.npz") as expected:
      assert set(ours.files) == set(expected.files)
  # One changed reference number: the task is reported and the exit status is 1.
  with np.load(fixture / "rte.expected.npz") as expected:
    arrays = {k: expected[k] for k in expected.files}
  arrays["1/mask"] = arrays["1/mask"] + 1
  np.savez(fixture / "rte.expected.npz", **arrays)
  bad = run_module("glm_jax.parity", ["inputs", *args, "--tasks=rte"])
  assert bad.returncode == 1 and "rte" in bad.stdout and "DIFFERS" in bad.stdout
  assert bad.stderr.strip().splitlines()[-1] == "error: 1 tasks differ from the reference: rte"
  assert "1/mask" in bad.stdout
  # A WikiText window without its document is a one-line error naming --data_dir.
  missing = run_module("glm_jax.parity", ["inputs", *args[:3], f"--data_dir={tmp_path}",
                                          "--tasks=wikitext_seq512"])
  assert missing.returncode == 2 and "--data_dir" in missing.stderr
  assert "Traceback" not in missing.stderr
