r"""Writes the compact reference subsets that the parity tests read from tests/fixtures/.

  python tools/make_parity_fixtures.py [--shared=../shared] [--output=tests/fixtures]

From the full sets in ../shared (the reference PyTorch GLM's outputs and the raw Gutenberg
books) it keeps what the tests compare and drops the rest, deterministically:
- glm_reference/model_glm_tiny_a.npz: copied byte for byte (the stress model is derived from
  it in the tests: every 2-D weight x5, which equals the shared stress file bit for bit).
- glm_reference/parity_cases_glm_tiny_a{,_stress}.npz: every forward case's inputs, targets,
  loss mask, per-token losses and loss, with the logits cut to LOGIT_COLUMNS vocabulary ids
  (the per-token losses still check the full-vocabulary log-sum-exp); no hidden states, mems
  or full-sequence logits.
- glm_reference/collator_inputs_glm_tiny_a_300.npz: the first 300 of the collator's 2000
  inputs (the statistics tests use 300), collator_stats_glm_tiny_a.json copied.
- gutenberg/: two small raw books (one per split of the built-in corpus) for the builder test.
"""

from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags  # pylint: disable=g-multiple-import
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS

# Vocabulary columns whose logits are kept: the stand-in vocabulary's special ids plus 52
# ordinary words (seed 0). Every position of every case keeps these 64 columns.
SPECIAL_IDS = (0, 1, 2, 3, 4, 5, 6, 7, 996, 997, 998, 999)
NUM_WORD_COLUMNS = 52
# Fields the tests read, per case; `logits`-like fields are cut to the columns above.
LOGIT_FIELDS = ("logits", "context_logits", "step_logits")
DROPPED_FIELDS = ("final_hidden", "layer_hiddens", "original_text", "enc_logits", "enc_mems",
                  "dec_logits", "context_mems", "final_mems", "full_logits",
                  "dec_attention_mask_2d")
NUM_COLLATOR_SAMPLES = 300
BOOKS = ("essays/modest_proposal.txt", "classics/yellow_wallpaper.txt")


def logit_columns() -> np.ndarray:
  words = np.random.default_rng(0).choice(np.arange(8, 996), NUM_WORD_COLUMNS, replace=False)
  return np.sort(np.concatenate([np.array(SPECIAL_IDS), words])).astype(np.int32)


def compact_cases(cases: dict, columns: np.ndarray) -> dict:
  """The case arrays the tests compare, logits restricted to `columns` (last axis)."""
  out = {"_case_names": cases["_case_names"], "_logit_columns": columns}
  for key, value in cases.items():
    if key.startswith("_"):
      continue
    field = key.split("/", 1)[1]
    if field in DROPPED_FIELDS:
      continue
    out[key] = value[..., columns] if field in LOGIT_FIELDS else value
  return out


def main(argv):
  del argv
  source = os.path.join(FLAGS.shared, "fixtures", "glm_reference")
  if not os.path.isdir(source):
    sys.exit(f"make_parity_fixtures: {source} is missing; pass --shared=DIR.")
  target = os.path.join(FLAGS.output, "glm_reference")
  os.makedirs(target, exist_ok=True)
  for name in ("model_glm_tiny_a.npz", "collator_stats_glm_tiny_a.json"):
    shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
  columns = logit_columns()
  for suffix in ("", "_stress"):
    with np.load(os.path.join(source, f"cases_glm_tiny_a{suffix}.npz")) as data:
      cases = {k: data[k] for k in data.files}
    np.savez_compressed(os.path.join(target, f"parity_cases_glm_tiny_a{suffix}.npz"),
                        **compact_cases(cases, columns))
  with np.load(os.path.join(source, "collator_inputs_glm_tiny_a.npz")) as data:
    np.savez_compressed(
        os.path.join(target, f"collator_inputs_glm_tiny_a_{NUM_COLLATOR_SAMPLES}.npz"),
        text=data["text"][:NUM_COLLATOR_SAMPLES],
        multi_doc=data["multi_doc"][:NUM_COLLATOR_SAMPLES])
  for book in BOOKS:
    path = os.path.join(FLAGS.output, "gutenberg", book)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(os.path.join(FLAGS.shared, "data", "gutenberg", book), path)
  for root, _, files in sorted(os.walk(FLAGS.output)):
    for name in sorted(files):
      path = os.path.join(root, name)
      print(f"{os.path.relpath(path, FLAGS.output)}: {os.path.getsize(path):,} bytes")


if __name__ == "__main__":
  # Flags are defined here, so that tests can import the functions above.
  flags.DEFINE_string("shared", os.path.join(os.path.dirname(REPO_ROOT), "shared"),
                      "The shared folder (fixtures/ and data/ inside).")
  flags.DEFINE_string("output", os.path.join(REPO_ROOT, "tests", "fixtures"),
                      "Where the compact sets go.")
  app.run(main)
