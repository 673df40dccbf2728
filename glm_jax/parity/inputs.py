r"""Our task code on the reference's evaluation and fine-tuning inputs (glm_protocol fixtures).

  python -m glm_jax.parity inputs --fixture_dir=../shared/fixtures/glm_protocol \
      --output_dir=/tmp/protocol --vocabulary=wordpiece:../shared/data/vocab/bert-base-uncased-vocab.txt

For every task of `manifest.json` (or those named by --tasks) reads the raw records of
`<task>.inputs.jsonl`, builds each example with the functions the evaluators and fine-tuning
run (glm_jax.lm_eval.{lambada,wikitext,xsum}, glm_jax.superglue.{sources,patterns,inputs})
under the manifest's settings (sequence length, pattern, task mask, split, the reference
conventions), and writes `OUT/<task>.npz` with the keys `<i>/<field>` of the reference's sample
dicts. Where `<task>.expected.npz` is beside the inputs, it compares every array, prints one
line per task and exits 1 on any difference (--nocheck: write only).

WikiText windows and ReCoRD training examples depend on the whole source file (the document's
tokens, the entity shuffler's state): their `_source` is read from --data_dir (default: the
fixture folder's `data/`, else `../../data` beside it, the layout of ../shared).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from absl import flags
from etils import epath
import numpy as np

from glm_jax import gin_utils

FLAGS = flags.FLAGS
LM_FIELDS = {"text": "tokens", "target": "targets", "attention_mask": "sep",
             "loss_mask": "loss_weights", "position_id": "positions"}


def define_flags() -> None:
  flags.DEFINE_string("fixture_dir", None, "Folder with manifest.json and <task>.inputs.jsonl.")
  flags.DEFINE_string("output_dir", None, "Where to write <task>.npz.")
  flags.DEFINE_string("vocabulary", None, "The vocabulary spec of the fixtures' tokenizer, "
                      "e.g. wordpiece:PATH/bert-base-uncased-vocab.txt.")
  flags.DEFINE_string("vocabulary_task_mask", None, "The same vocabulary with task masks "
                      "(default: --vocabulary in its family's task-mask configuration).")
  flags.DEFINE_string("data_dir", None, "Folder the records' `_source` paths are relative to "
                      "(default: FIXTURE_DIR/data, else FIXTURE_DIR/../../data).")
  flags.DEFINE_list("tasks", None, "Only these tasks (default: every task of the manifest).")
  flags.DEFINE_bool("check", True, "Compare with <task>.expected.npz where present; exit 1 on "
                    "a difference.")


# ------------------------------------------------------------------------------ fixtures


def read_manifest(fixture_dir: str) -> dict:
  path = epath.Path(fixture_dir) / "manifest.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; pass --fixture_dir=DIR with manifest.json "
                            "and <task>.inputs.jsonl (../shared/fixtures/glm_protocol).")
  return json.loads(path.read_text())


def read_records(fixture_dir: str, task: str) -> List[dict]:
  """The records of `<task>.inputs.jsonl` (`<task>.jsonl` for the tokenizer strings)."""
  root = epath.Path(fixture_dir)
  path = next((p for p in (root / f"{task}.inputs.jsonl", root / f"{task}.jsonl")
               if p.exists()), None)
  if path is None:
    raise FileNotFoundError(f"{root / (task + '.inputs.jsonl')} does not exist; the manifest "
                            f"lists task {task!r}.")
  return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")
          if line.strip()]


def data_roots(fixture_dir: str, data_dir: Optional[str]) -> List[epath.Path]:
  if data_dir:
    return [epath.Path(data_dir)]
  root = epath.Path(fixture_dir)
  return [root / "data", root.parent.parent / "data"]


def source_path(record: dict, roots: List[epath.Path]) -> str:
  """The file a record names in `_source`, under the first data root that has it."""
  for root in roots:
    if (root / record["_source"]).exists():
      return str(root / record["_source"])
  raise FileNotFoundError(f"{record['_source']} is needed (the whole source file) but is not "
                          f"under {', '.join(map(str, roots))}; pass --data_dir=DIR holding it "
                          "(../shared/data).")


# ----------------------------------------------------------------------------- vocabulary


def task_mask_spec(spec: str, task_mask: bool) -> str:
  """`spec` in the configuration of its family with (or without) task masks."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  kind, path, name = vocab_lib.parse_spec(spec)
  if kind not in vocab_lib.CONFIGURATIONS:
    raise ValueError(f"{spec} has no configurations; pass --vocabulary_task_mask.")
  configurations = vocab_lib.CONFIGURATIONS[kind]
  default = vocab_lib.families.DEFAULT_CONFIGURATION[kind]
  current = configurations[name or default]
  if current.task_mask == task_mask:
    return spec
  for candidate in [default] + sorted(configurations):
    cfg = configurations[candidate]
    if cfg.task_mask == task_mask and not cfg.decoder_mask:
      return vocab_lib.make_spec(kind, path, candidate)
  raise ValueError(f"The {kind} vocabulary has no configuration with task_mask={task_mask}; "
                   "pass --vocabulary_task_mask.")


class Vocabularies:
  """The fixture vocabulary without and with task masks (the manifest's `task_mask`)."""

  def __init__(self, spec: str, task_mask_spec_: Optional[str] = None):
    from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
    self._get = vocab_lib.get_vocabulary
    self._specs = {False: task_mask_spec(spec, False),
                   True: task_mask_spec_ or task_mask_spec(spec, True)}

  def __call__(self, task_mask: bool):
    vocabulary = self._get(self._specs[bool(task_mask)])
    if vocabulary.special.task_mask != bool(task_mask):
      raise ValueError(f"{self._specs[bool(task_mask)]} has task_mask="
                       f"{vocabulary.special.task_mask}; the task needs {bool(task_mask)}.")
    return vocabulary


# -------------------------------------------------------------------------- task builders

Sample = Dict[str, np.ndarray]


def _lm_sample(row: dict, extra: Tuple[str, ...] = ()) -> Sample:
  sample = {key: np.asarray(row[ours]) for key, ours in LM_FIELDS.items()}
  sample["loss_mask"] = sample["loss_mask"].astype(np.int32)
  for key in extra:
    sample[key] = np.asarray(row[key])
  return sample


def build_lambada(records, settings, vocabularies, roots) -> Iterator[Sample]:
  del roots
  from glm_jax.lm_eval import lambada  # pylint: disable=g-import-not-at-top
  vocabulary = vocabularies(settings["task_mask"])
  for record in records:
    context, answer = lambada.encode_passage(record["text"], vocabulary)
    row = lambada.build_row(context, answer, vocabulary.special,
                            sequence_length=settings["seq_length"],
                            bidirectional=not settings["unidirectional"])
    yield _lm_sample(row, ("answer_ids",))


@functools.lru_cache(maxsize=4)
def _wikitext_tokens(path: str, spec: str) -> np.ndarray:
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from glm_jax.lm_eval import wikitext  # pylint: disable=g-import-not-at-top
  return wikitext.tokenize(wikitext.read(path), vocab_lib.get_vocabulary(spec), "reference")


def build_wikitext(records, settings, vocabularies, roots) -> Iterator[Sample]:
  """The reference convention: rows of seq_length + 1, the whole file detokenized at once."""
  from glm_jax.lm_eval import wikitext  # pylint: disable=g-import-not-at-top
  vocabulary = vocabularies(settings["task_mask"])
  for record in records:
    tokens = _wikitext_tokens(source_path(record, roots), vocabulary.spec)
    if len(tokens) != record["document_tokens"]:
      raise ValueError(f"{record['_source']} gives {len(tokens)} tokens, the reference's "
                       f"{record['document_tokens']}: not the same file or vocabulary.")
    window = wikitext.window_length(settings["seq_length"], "reference")
    start, _, end = wikitext.window_span(record["window_index"], len(tokens), window,
                                         settings["overlapping_eval"])
    if (start, end) != (record["token_start"], record["token_end"]):
      raise ValueError(f"Window {record['window_index']} covers tokens [{start}, {end}), the "
                       f"reference's [{record['token_start']}, {record['token_end']}).")
    yield _lm_sample(wikitext.window_row(
        tokens, record["window_index"], vocabulary.special,
        sequence_length=settings["seq_length"], overlap=settings["overlapping_eval"],
        bidirectional=not settings["unidirectional"], convention="reference"))


def build_xsum(records, settings, vocabularies, roots) -> Iterator[Sample]:
  del roots
  from glm_jax.lm_eval import xsum  # pylint: disable=g-import-not-at-top
  vocabulary = vocabularies(settings["task_mask"])
  special = vocabulary.special
  for record in records:
    source, summary = xsum.join_lines(record["document"]), xsum.join_lines(record["summary"])
    if settings["split"] == "train":
      row = xsum.train_row(source, summary, vocabulary, special,
                           source_length=settings["src_seq_length"],
                           target_length=settings["tgt_seq_length"])
      yield _lm_sample(row)
    else:
      row = xsum.context_row(source, vocabulary, special, source_length=settings["src_seq_length"])
      yield {k: v for k, v in _lm_sample(row).items() if k in ("text", "attention_mask",
                                                               "position_id")}


def build_wordpiece(records, settings, vocabularies, roots) -> Iterator[Sample]:
  del settings, roots
  plain, masked = vocabularies(False), vocabularies(True)
  for record in records:
    yield {"ids": np.asarray(plain.encode(record["text"]), np.int32),
           "ids_task_mask": np.asarray(masked.encode(record["text"]), np.int32)}


def _cloze_settings(settings: dict):
  """The manifest's reference flags as our ClozeSettings (public WSC: the gold span only)."""
  from glm_jax.superglue import inputs  # pylint: disable=g-import-not-at-top
  loss = settings["loss_func"]
  if settings["task"].lower() == "wsc" and not settings["wsc_negative"]:
    loss = "generative"  # finetune.py: WSC without --wsc-negative runs the LM forward step
  return inputs.ClozeSettings(pattern_id=settings["pattern_id"], loss=loss,
                              length_penalty=settings["length_penalty"],
                              wsc_candidates="record")


def _superglue_examples(task: str, records: List[dict], settings, roots, split: str):
  """(example, settings) per fixture record, built as the evaluator or the trainer does."""
  from glm_jax.superglue import inputs, sources  # pylint: disable=g-import-not-at-top
  cloze = _cloze_settings(settings)
  if split == "train":  # the training form depends on the whole file (ReCoRD's shuffler)
    raw = sources.read_jsonl(source_path(records[0], roots))
    line_of = {ex["idx"]: line for line, ex in enumerate(raw)}
    by_key = {}
    for example in inputs.training_examples(task, sources.flatten(task, raw), cloze):
      key = (line_of[example.idx["passage"] if task == "record" else example.idx],
             example.answers[0] if task == "record" else None)
      by_key.setdefault(key, example)
    for record in records:
      key = (record["_line"], record.get("_answer"))
      if key not in by_key:
        raise ValueError(f"No training example for line {record['_line']} answer "
                         f"{record.get('_answer')!r} of {record['_source']}.")
      yield by_key[key], cloze
    return
  for record in records:
    flat = sources.flatten(task, [record])
    if task == "multirc":
      flat = [f for f in flat if (f["idx"]["question"], f["idx"]["answer"]) == (
          record["_question_idx"], record["_answer_idx"])]
    if len(flat) != 1:
      raise ValueError(f"{task} fixture {record['_fixture_index']}: {len(flat)} examples, "
                       "expected one.")
    yield inputs.render_records(task, flat, cloze)[0], cloze


def reference_split(spec: dict) -> str:
  """'train' or 'dev': the reference split the manifest's `source.split` names."""
  text = spec.get("source", {}).get("split", "")
  match = re.search(r"split '(\w+)'|'(\w+)' split", text)
  return (match.group(1) or match.group(2)) if match else "dev"


def build_superglue(records, settings, vocabularies, roots, split) -> Iterator[Sample]:
  """Single- and multi-token cloze rows from inputs.make_batch (one example per batch)."""
  from glm_jax.superglue import inputs  # pylint: disable=g-import-not-at-top
  task = settings["task"].lower()
  vocabulary = vocabularies(settings["task_mask"])
  length = settings["seq_length"]
  for example, cloze in _superglue_examples(task, records, settings, roots, split):
    layout = inputs.layout_for(cloze, "auto")
    encoded = inputs.encode_examples([example], vocabulary, length).encoded[0]
    batch = inputs.make_batch([encoded], inputs.batch_labels([example], layout),
                              sequence_length=length, layout=layout)
    yield _cloze_sample(task, example, encoded, batch, layout, split)


def _cloze_sample(task, example, encoded, batch, layout, split) -> Sample:
  """The reference's sample dict of one example, from our batch arrays."""
  if layout == "generative":  # tasks/superglue/pvp.py WscPVP's LM-step sample
    sample = _lm_sample({k: v[0] for k, v in batch.items()})
    sample["label"] = np.asarray(batch["label"][0])
    return sample
  sample = {"text": batch["tokens"][0], "position": batch["positions"][0],
            "mask": batch["sep"][0]}
  if not encoded.multi_token:
    t = batch["tokens"].shape[1]
    sample["target"] = batch["candidate_ids"][0]
    sample["logit_mask"] = (np.arange(t) == batch["sep"][0]).astype(np.int32)  # unused by it
  else:
    sample["target"] = batch["targets"][0]
    sample["logit_mask"] = batch["loss_weights"][0].astype(np.int32)
    sample["candidate_ids"] = np.asarray([t for a in encoded.answers for t in a])
    sample["candidate_lengths"] = np.asarray([len(a) for a in encoded.answers])
  sample["label"] = np.asarray(_reference_label(task, example, split))
  if task == "record" and split == "dev":
    sample["choice_is_answer"] = np.asarray([v in example.answers
                                             for v in example.candidate_values], np.int32)
  return sample


def _reference_label(task: str, example, split: str) -> int:
  """The `label` the reference's sample carries (not a model input for WSC and ReCoRD).

  WSC: the index of its label in ["False", "True"] (0 in training: the gold span is first);
  ReCoRD: its constant label index, 1 for evaluation (gold answers are scored instead) and 0
  for training (the gold answer is first); other tasks: the gold candidate's index.
  """
  if task == "wsc":
    return 0 if split == "train" else int(bool(example.label_value))
  if task == "record":
    return 0 if split == "train" else 1
  return example.label


BUILDERS: Dict[str, Callable] = {
    "lambada": build_lambada, "wikitext": build_wikitext, "xsum": build_xsum,
    "wordpiece": build_wordpiece,
}
SUPERGLUE_FAMILIES = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")


def build_task(fixture_dir: str, name: str, spec: dict, vocabularies: Vocabularies,
               roots: List[epath.Path]) -> Dict[str, np.ndarray]:
  """{'<i>/<field>': array} of one task, fields as the manifest's `keys`."""
  records = read_records(fixture_dir, name)
  family, settings, keys = spec["family"], spec["settings"], tuple(spec["keys"])
  if family in BUILDERS:
    samples = BUILDERS[family](records, settings, vocabularies, roots)
  elif family in SUPERGLUE_FAMILIES:
    samples = build_superglue(records, settings, vocabularies, roots, reference_split(spec))
  else:
    raise ValueError(f"Task {name}: unknown family {family!r}.")
  out = {}
  for i, sample in enumerate(samples):
    missing = set(keys) - set(sample)
    if missing:
      raise ValueError(f"Task {name} example {i}: no {sorted(missing)} built.")
    for key in keys:
      out[f"{i}/{key}"] = np.asarray(sample[key]).astype(np.int32)
  if len(out) != len(records) * len(keys):
    raise ValueError(f"Task {name}: built {len(out) // len(keys)} of {len(records)} examples.")
  return out


def compare(ours: Dict[str, np.ndarray], expected_path: str) -> Tuple[int, int, List[str]]:
  """(examples equal, examples, up to 5 differing keys) against an expected .npz."""
  with np.load(expected_path) as expected:
    keys = set(expected.files)
    if keys != set(ours):
      extra, missing = sorted(set(ours) - keys)[:3], sorted(keys - set(ours))[:3]
      return 0, len({k.split("/")[0] for k in keys}), [f"keys differ: extra {extra}, "
                                                          f"missing {missing}"]
    bad_examples, bad_keys = set(), []
    for key in sorted(keys):
      a, b = ours[key], expected[key]
      if a.shape != b.shape or not np.array_equal(a, b):
        bad_examples.add(key.split("/")[0])
        bad_keys.append(f"{key} {a.shape} vs {b.shape}")
  total = len({k.split("/")[0] for k in keys})
  return total - len(bad_examples), total, bad_keys[:5]


def main(argv) -> None:
  gin_utils.begin_cli(argv, "--fixture_dir, --output_dir, --vocabulary")
  try:
    missing = [f"--{n}" for n in ("fixture_dir", "output_dir", "vocabulary") if not FLAGS[n].value]
    if missing:
      raise ValueError(f"{', '.join(missing)} required, e.g. --fixture_dir=../shared/fixtures/"
                       "glm_protocol --output_dir=/tmp/protocol --vocabulary=wordpiece:PATH.")
    manifest = read_manifest(FLAGS.fixture_dir)
    tasks = manifest["tasks"]
    names = FLAGS.tasks or sorted(tasks)
    unknown = [n for n in names if n not in tasks]
    if unknown:
      raise ValueError(f"Unknown tasks {unknown}; the manifest has {', '.join(sorted(tasks))}.")
    vocabularies = Vocabularies(FLAGS.vocabulary, FLAGS.vocabulary_task_mask)
    roots = data_roots(FLAGS.fixture_dir, FLAGS.data_dir)
    out_dir = epath.Path(FLAGS.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
      arrays = build_task(FLAGS.fixture_dir, name, tasks[name], vocabularies, roots)
      with (out_dir / f"{name}.npz").open("wb") as f:
        np.savez_compressed(f, **arrays)
      expected = epath.Path(FLAGS.fixture_dir) / f"{name}.expected.npz"
      if FLAGS.check and expected.exists():
        equal, total, bad = compare(arrays, str(expected))
        status = "ok" if equal == total and not bad else "DIFFERS"
        print(f"{name:<26} {equal:>4}/{total} examples equal  {status}"
              + (f"  e.g. {'; '.join(bad)}" if bad else ""), flush=True)
        if status != "ok":
          failed.append(name)
      else:
        print(f"{name:<26} wrote {len(arrays)} arrays", flush=True)
    print(f"Wrote {len(names)} tasks to {out_dir}", flush=True)
  except (ValueError, FileNotFoundError, KeyError) as e:
    gin_utils.exit_with_error(e)
  if failed:
    gin_utils.exit_with_error(gin_utils.RunFault(
        f"{len(failed)} tasks differ from the reference: {', '.join(failed)}"))
