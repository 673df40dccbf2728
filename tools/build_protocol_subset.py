"""Builds tests/fixtures/glm_protocol/ from ../shared/fixtures/glm_protocol, deterministically.

  python tools/build_protocol_subset.py [--source=../shared/fixtures/glm_protocol]
      [--data=../shared/data] [--output_dir=tests/fixtures/glm_protocol]

Keeps, for every task, a few examples (the first ones, every truncated one up to a cap, and
the special ones: WikiText window 0), renumbered 0.. in `<task>.inputs.jsonl` (each line's
`_fixture_index`), `<task>.expected.npz` (keys `<i>/<field>`, compressed) and the manifest's
`examples`; the manifest keeps every other field. The whole source files that WikiText windows
and ReCoRD training examples depend on are copied xz-compressed under `data/`.
"""

from __future__ import annotations

import json
import lzma
import os
import re

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("source", "../shared/fixtures/glm_protocol", "The full fixture set.")
flags.DEFINE_string("data", "../shared/data", "The data the records' `_source` names.")
flags.DEFINE_string("output_dir", "tests/fixtures/glm_protocol", "Where the subset goes.")
flags.DEFINE_integer("per_task", 3, "Examples kept per task (plus the special ones).")

WHOLE_FILES = ("wikitext-2/test.txt", "fewglue/ReCoRD/train.jsonl")
MAX_TRUNCATED = 2


def _chosen(task: str, spec: dict, records: list) -> list:
  """Fixture indices kept for `task`."""
  if task == "wordpiece":  # every 6th string: real text and the probes' kinds
    return list(range(0, len(records), 6))
  keep = list(range(min(FLAGS.per_task, len(records))))
  examples = spec.get("examples") or []
  truncated = [e["fixture_index"] for e in examples
               if e.get("truncated") or e.get("source_truncated") or e.get("target_truncated")]
  keep += [i for i in truncated if i not in keep][:MAX_TRUNCATED]
  if spec["family"] == "wikitext":
    first = [i for i, r in enumerate(records) if r["window_index"] == 0]
    keep += [i for i in first if i not in keep]
  if spec["family"] == "lambada":  # the longest passage of the set
    longest = max(examples, key=lambda e: e["num_context_tokens"])["fixture_index"]
    keep += [longest] if longest not in keep else []
  return sorted(keep)


def main(argv):
  del argv
  os.makedirs(os.path.join(FLAGS.output_dir, "data"), exist_ok=True)
  with open(os.path.join(FLAGS.source, "manifest.json")) as f:
    manifest = json.load(f)
  for task, spec in sorted(manifest["tasks"].items()):
    name = "wordpiece.jsonl" if task == "wordpiece" else f"{task}.inputs.jsonl"
    with open(os.path.join(FLAGS.source, name), encoding="utf-8") as f:
      lines = [line for line in f.read().split("\n") if line.strip()]
    records = [json.loads(line) for line in lines]
    keep = _chosen(task, spec, records)
    with open(os.path.join(FLAGS.output_dir, name), "w", encoding="utf-8") as f:
      for new, old in enumerate(keep):  # the line as it is, but its new index
        line, count = re.subn(r'"_fixture_index": *%d\b' % old, f'"_fixture_index": {new}',
                              lines[old])
        if count != 1 or json.loads(line) != dict(records[old], _fixture_index=new):
          raise ValueError(f"{name} line {old}: cannot renumber its _fixture_index.")
        f.write(line + "\n")
    with np.load(os.path.join(FLAGS.source, f"{task}.expected.npz")) as expected:
      arrays = {f"{new}/{key.split('/', 1)[1]}": expected[key]
                for new, old in enumerate(keep) for key in expected.files
                if key.split("/", 1)[0] == str(old)}
    np.savez_compressed(os.path.join(FLAGS.output_dir, f"{task}.expected.npz"), **arrays)
    examples = spec.get("examples")
    if isinstance(examples, list):
      spec["examples"] = [dict(examples[old], fixture_index=new) for new, old in enumerate(keep)]
    spec["num_examples"] = len(keep)
    spec["subset_of"] = {"fixture_indices": keep, "of": len(records)}
  manifest["subset"] = ("tests/fixtures/glm_protocol: a few examples of every task of "
                        "shared/fixtures/glm_protocol (tools/build_protocol_subset.py)")
  with open(os.path.join(FLAGS.output_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1, ensure_ascii=False)
  for path in WHOLE_FILES:
    target = os.path.join(FLAGS.output_dir, "data", path + ".xz")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(os.path.join(FLAGS.data, path), "rb") as src:
      data = src.read()
    with lzma.open(target, "wb", preset=9 | lzma.PRESET_EXTREME) as out:
      out.write(data)


if __name__ == "__main__":
  app.run(main)
