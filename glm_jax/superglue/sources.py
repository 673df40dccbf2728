"""SuperGLUE examples from the release JSONL layout, FewGLUE, or TFDS, as flat records.

Every task's examples become flat JSON-able dicts ("records") that `patterns.render` reads:
MultiRC one record per answer option, ReCoRD one per query, WSC with its own `candidates`
where the file has them (the reference's WSC-negative format) and `heuristic_candidates`. The
release layout is `<dir>/<Task>/{train,val,test}.jsonl` (the SuperGLUE zips, `SUPERGLUE_DIR`);
FewGLUE is the same format with only `train.jsonl` (`FEWGLUE_DIR`).
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

import gin

from glm_jax import paths

TASKS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc")
TASK_DIRS = {"boolq": "BoolQ", "cb": "CB", "copa": "COPA", "multirc": "MultiRC",
             "record": "ReCoRD", "rte": "RTE", "wic": "WiC", "wsc": "WSC"}
SPLITS = ("train", "validation", "test")
_SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
# Label values of TFDS super_glue ClassLabels, by index (TFDS uses -1 for unlabeled test).
_TFDS_LABELS = {
    "boolq": (False, True), "cb": ("entailment", "contradiction", "neutral"),
    "copa": (0, 1), "multirc": (0, 1), "rte": ("entailment", "not_entailment"),
    "wic": (False, True), "wsc": (False, True),
}
MAX_WSC_CANDIDATES = 10
_PRONOUNS = {"he", "she", "it", "they", "him", "her", "them", "his", "hers", "its", "their",
             "theirs", "i", "me", "my", "we", "us", "our", "you", "your", "who", "which", "that"}
_DETERMINERS = {"the", "a", "an", "his", "her", "their", "my", "our", "your", "its", "this",
                "that", "these", "those"}


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _resolve(directory: Optional[str]) -> Optional[str]:
  """A relative directory is taken from the working directory, else from the repo root."""
  if (not directory or paths.is_url(directory) or os.path.isabs(directory)
      or os.path.isdir(directory)):
    return directory
  from_root = os.path.join(_REPO_ROOT, directory)
  return from_root if os.path.isdir(from_root) else directory


@gin.configurable
def data_dirs(superglue_dir: Optional[str] = None, fewglue_dir: Optional[str] = None) -> dict:
  """Where the release and FewGLUE JSONL files live (gin macros SUPERGLUE_DIR / FEWGLUE_DIR)."""
  return {"superglue": _resolve(superglue_dir), "fewglue": _resolve(fewglue_dir)}


def check_task(task: str) -> str:
  task = task.lower()
  if task not in TASKS:
    raise ValueError(f"Unknown SuperGLUE task {task!r}; use one of {', '.join(TASKS)}.")
  return task


def jsonl_path(data_dir: Optional[str], task: str, split: str) -> str:
  """`<data_dir>/<Task>/<split>.jsonl`, with a clear error when it is missing."""
  task = check_task(task)
  if split not in _SPLIT_FILES:
    raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
  if not data_dir:
    raise ValueError("No SuperGLUE data directory: set the gin macro SUPERGLUE_DIR (or "
                     "FEWGLUE_DIR) to a folder holding <Task>/{train,val,test}.jsonl.")
  path = str(paths.resolve(data_dir) / TASK_DIRS[task] / _SPLIT_FILES[split])
  if not paths.resolve(path).exists():
    raise FileNotFoundError(f"{path} does not exist; point SUPERGLUE_DIR/FEWGLUE_DIR at the "
                            f"unzipped release (<dir>/{TASK_DIRS[task]}/{_SPLIT_FILES[split]}).")
  return path


# Fields every release example of a task has (dotted: nested); labels are absent from test
# files. A missing one stops reading with the file and line named.
REQUIRED_FIELDS = {
    "boolq": ("idx", "question", "passage"), "cb": ("idx", "premise", "hypothesis"),
    "copa": ("idx", "premise", "choice1", "choice2", "question"),
    "multirc": ("idx", "passage.text", "passage.questions"),
    "record": ("idx", "passage.text", "passage.entities", "qas"),
    "rte": ("idx", "premise", "hypothesis"), "wic": ("idx", "word", "sentence1", "sentence2"),
    "wsc": ("idx", "text", "target.span1_text", "target.span2_text", "target.span1_index",
            "target.span2_index"),
}


def read_jsonl(path: str) -> List[dict]:
  """The JSON objects of a JSONL file; a line that is not one fails naming file and line."""
  return [example for _, example in read_jsonl_lines(path)]


def read_jsonl_lines(path: str) -> List[Tuple[int, dict]]:
  """(line number, object) of each non-blank line of a JSONL file (ValueError naming a bad
  line)."""
  try:
    text = paths.read_text(path)
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); pass the "
                     "release's JSONL file.") from None
  out = []
  for number, line in enumerate(text.splitlines(), start=1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except ValueError as e:
      raise ValueError(f"{path} line {number} is not valid JSON ({e}); fix or remove that "
                       "line.") from None
    if not isinstance(value, dict):
      raise ValueError(f"{path} line {number} is a JSON {type(value).__name__}, not an "
                       "example object; fix or remove that line.")
    out.append((number, value))
  return out


def _missing_field(example: dict, fields) -> Optional[str]:
  for field in fields:
    value = example
    for part in field.split("."):
      if not isinstance(value, dict) or part not in value:
        return field
      value = value[part]
  return None


def check_examples(task: str, lines: List[Tuple[int, dict]], path: str) -> None:
  """Every example has its task's fields and flattens; else ValueError naming file and line."""
  task = check_task(task)
  for number, example in lines:
    missing = _missing_field(example, REQUIRED_FIELDS[task])
    if missing is None:
      try:
        flatten(task, [example])
      except (KeyError, TypeError, IndexError, AttributeError) as e:
        missing = f"{type(e).__name__} {e} in a nested field"
    if missing is not None:
      raise ValueError(f"{path} line {number}: the example lacks {missing!r}, which every "
                       f"{TASK_DIRS[task]} example has; fix that line, or point SUPERGLUE_DIR / "
                       "FEWGLUE_DIR at the release.")


def flatten(task: str, examples: Iterable[dict]) -> List[dict]:
  """Release-format examples -> flat records (MultiRC per answer, ReCoRD per query)."""
  task = check_task(task)
  examples = list(examples)
  if task == "multirc":
    out = []
    for ex in examples:
      for q in ex["passage"]["questions"]:
        for a in q["answers"]:
          out.append({"idx": {"paragraph": ex["idx"], "question": q["idx"], "answer": a["idx"]},
                      "paragraph": ex["passage"]["text"], "question": q["question"],
                      "answer": a["text"], "label": a.get("label")})
    return out
  if task == "record":
    out = []
    for ex in examples:
      text = ex["passage"]["text"]
      entities = list(dict.fromkeys(text[e["start"]:e["end"] + 1]
                                    for e in ex["passage"]["entities"]))  # inclusive ends
      for q in ex["qas"]:
        answers = list(dict.fromkeys(a["text"] for a in q.get("answers", [])))
        out.append({"idx": {"passage": ex["idx"], "query": q["idx"]}, "passage": text,
                    "query": q["query"], "entities": entities, "answers": answers})
    return out
  if task == "wsc":
    out = []
    for ex in examples:
      record = {"idx": ex["idx"], "text": ex["text"], "label": ex.get("label"), **ex["target"]}
      if "candidates" in ex:  # WSC-negative: [{"text": ...}, ...], first occurrences kept
        record["candidates"] = list(dict.fromkeys(c["text"] for c in ex["candidates"]))
      out.append(record)
    return add_wsc_candidates(out)
  out = []
  for ex in examples:
    record = {k: v for k, v in ex.items() if k not in ("version", "start1", "start2", "end1",
                                                       "end2")}
    record.setdefault("label", None)
    out.append(record)
  return out


def _heuristic_noun_phrases(text: str) -> List[str]:
  """Capitalised word runs and determiner + word pairs: extra WSC candidates."""
  words = re.findall(r"[A-Za-z][\w'-]*", text)
  phrases, run = [], []
  for i, w in enumerate(words + [""]):
    if w and w[0].isupper() and w.lower() not in _PRONOUNS | _DETERMINERS:
      run.append(w)
      continue
    if run:
      phrases.append(" ".join(run))
      run = []
    if w.lower() in _DETERMINERS and i + 1 < len(words):
      nxt = words[i + 1]
      if nxt.lower() not in _PRONOUNS | _DETERMINERS:
        phrases.append(f"{w} {nxt}")
  return phrases


def add_wsc_candidates(records: List[dict]) -> List[dict]:
  """Adds `heuristic_candidates` to WSC records: rivals of the gold span, for data without
  candidate lists (the public WSC).

  Rivals are the other span1 texts asked about the same pronoun of the same text; when that
  leaves fewer than two candidates with the gold span, capitalised word runs and determiner +
  word phrases of the text are added. At most MAX_WSC_CANDIDATES with the gold span.
  """
  groups = collections.defaultdict(list)
  for r in records:
    groups[(r["text"], r["span2_index"])].append(r["span1_text"])
  out = []
  for r in records:
    seen, candidates = set(), []

    def add(phrase):
      key = phrase.lower().strip()
      if key and key not in seen and key != r["span2_text"].lower():
        seen.add(key)
        candidates.append(phrase)

    add(r["span1_text"])
    for phrase in groups[(r["text"], r["span2_index"])]:
      add(phrase)
    if len(candidates) < 2:
      for phrase in _heuristic_noun_phrases(r["text"]):
        add(phrase)
    out.append({**r, "heuristic_candidates": candidates[1:MAX_WSC_CANDIDATES]})
  return out


def load_jsonl_records(task: str, split: str, data_dir: Optional[str]) -> List[dict]:
  """Flat records of one task and split from the release JSONL layout."""
  path = jsonl_path(data_dir, task, split)
  lines = read_jsonl_lines(path)
  check_examples(task, lines, path)
  return flatten(task, [example for _, example in lines])


def records_path(task: str, split: str, source: str = "superglue") -> str:
  """The file load_records(task, split, source) reads (FileNotFoundError when missing)."""
  dirs = data_dirs()
  if source not in ("superglue", "fewglue"):
    raise ValueError(f"Unknown source {source!r}; use 'superglue' or 'fewglue'.")
  directory = dirs["fewglue"] if source == "fewglue" and split == "train" else dirs["superglue"]
  return jsonl_path(directory, task, split)


@gin.configurable
def load_records(task: str, split: str, source: str = "superglue") -> List[dict]:
  """Records of `task`/`split` from 'superglue' (SUPERGLUE_DIR) or 'fewglue' files.

  'fewglue' reads its 32-example train sets from FEWGLUE_DIR and validation/test from
  SUPERGLUE_DIR, as FewGLUE ships train sets only.
  """
  dirs = data_dirs()
  if source == "superglue":
    return load_jsonl_records(task, split, dirs["superglue"])
  if source == "fewglue":
    return load_jsonl_records(task, split, dirs["fewglue"] if split == "train"
                              else dirs["superglue"])
  raise ValueError(f"Unknown source {source!r}; use 'superglue' or 'fewglue'.")


def _decode(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if hasattr(value, "tolist"):
    value = value.tolist()
  if isinstance(value, list):
    return [_decode(v) for v in value]
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  return value


def from_tfds(task: str, examples: Iterable[Dict[str, Any]]) -> List[dict]:
  """TFDS super_glue/<task> numpy examples -> the same flat records as the JSONL reader."""
  task = check_task(task)
  out = []
  for ex in examples:
    ex = _decode(ex)
    label = ex.pop("label", None)
    if task == "record":
      ex["answers"] = list(dict.fromkeys(ex.get("answers", [])))
      ex["entities"] = list(dict.fromkeys(ex.get("entities", [])))
    elif task == "multirc":
      ex["label"] = None if label is None or label < 0 else _TFDS_LABELS[task][label]
      ex["paragraph"] = ex.pop("paragraph")
    else:
      ex["label"] = None if label is None or label < 0 else _TFDS_LABELS[task][label]
    for key in ("start1", "start2", "end1", "end2"):
      ex.pop(key, None)
    out.append(ex)
  if task == "wsc":
    out = add_wsc_candidates(out)
  return out
