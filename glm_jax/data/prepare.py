r"""Tokenizes a corpus once into a prepared corpus (`prepared.py`): an Apache Beam pipeline.

  python -m glm_jax.data.prepare --input='/data/wiki/*.jsonl.gz' \
      --vocabulary=wordpiece:/data/bert-base-uncased-vocab.txt --output_dir=/data/prepared/wiki
  python -m glm_jax.data.prepare --input=tfds:wikipedia/20230601.en:1.0.0 \
      --tfds_data_dir=/data/tfds --vocabulary=SPEC --output_dir=gs://b/prepared/wiki \
      -- --runner=DataflowRunner --project=P --region=R --temp_location=gs://b/tmp ...

SOURCE (`--input`, comma-separated, repeatable) is text files (one document per line), JSONL
files (the `--text_key` field; .jsonl / .jsonl.gz, or any file with --text_key), gzip allowed,
globs allowed (local or gs://), or `tfds:NAME:VERSION`, a TFDS dataset already prepared in
`--tfds_data_dir` (never downloaded; its 'validation' split is used when it has one).
Validation documents come from `--validation_input`, else every `--holdout_every`-th document
of each work unit is held out (counted from an offset drawn from the unit).

The input is planned into work units (byte ranges of about `--unit_bytes` of each plain file,
one unit per gzip file, TFDS example ranges); a Beam ParDo tokenizes each unit into one shard
per split. Arguments after `--` are Beam pipeline options; without them the DirectRunner runs
`--direct_num_workers=<cores> --direct_running_mode=multi_processing`. Re-running skips units
whose record (written after their files) is complete; a killed run leaves only temporary
names, which a re-run deletes. The manifest is written last, after the check of each input
file's bad lines (invalid UTF-8, unparsable JSON): past `--max_dropped_fraction` (default 1%
of its lines) the run stops with one line naming the file and its counts, and writes no
manifest (a re-run with a higher limit reuses the finished units). docs/data_pipeline.md has
the Dataflow, Flink and Spark commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence

from absl import flags
from absl import logging
from etils import epath
import numpy as np

from glm_jax import gin_utils, sizes
from glm_jax.data import corpus
from glm_jax.data import prepared

FLAGS = flags.FLAGS
DEFAULT_UNIT_BYTES = 128 << 20
DEFAULT_HOLDOUT_EVERY = 100
_ENCODE_BATCH = 512


# ----------------------------------------------------------------------------- planning


def _glob(pattern: str) -> List[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not any(c in pattern for c in "*?["):
    if not epath.Path(pattern).exists():
      raise FileNotFoundError(f"Input {pattern} does not exist; check --input.")
    return [pattern]
  paths = sorted(tf.io.gfile.glob(pattern))
  if not paths:
    raise FileNotFoundError(f"Input pattern {pattern} matches no file; check --input.")
  return paths


def _tfds_dir(name_version: str, data_dir: Optional[str]) -> epath.Path:
  name, sep, version = name_version.rpartition(":")
  if not sep or not name or not version:
    raise ValueError(f"TFDS input 'tfds:{name_version}' must be tfds:NAME:VERSION (e.g. "
                     "tfds:wikipedia/20230601.en:1.0.0).")
  root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")
  path = epath.Path(root) / name / version
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(
        f"TFDS dataset {name}:{version} is not prepared in {root} (no {path}/dataset_info.json);"
        f" build it there first (`tfds build {name.split('/')[0]} --data_dir={root}`), then pass "
        "--tfds_data_dir; glm_jax never downloads data.")
  return path


def _tfds_units(name_version: str, data_dir: Optional[str], target: Optional[str],
                unit_bytes: int) -> List[dict]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  directory = _tfds_dir(name_version, data_dir)
  info = tfds.builder_from_directory(directory).info
  splits = {"train": "train"}
  if "validation" in info.splits:
    splits["validation"] = "validation"
  units = []
  for ours, theirs in splits.items():
    if target is not None and ours != "train":
      continue
    split = info.splits[theirs]
    count = max(1, min(split.num_examples, sizes.ceil_div(int(split.num_bytes or 1), unit_bytes)))
    bounds = [split.num_examples * i // count for i in range(count + 1)]
    role = target or ("validation" if ours == "validation" else
                      ("train" if "validation" in splits else "holdout"))
    for a, b in zip(bounds[:-1], bounds[1:]):
      if b > a:
        units.append({"kind": "tfds", "directory": os.fspath(directory),
                      "split": f"{theirs}[{a}:{b}]", "role": role})
  return units


def _file_units(path: str, role: str, unit_bytes: int, text_key: Optional[str]) -> List[dict]:
  size = epath.Path(path).stat().length
  jsonl = corpus.is_jsonl(path, text_key)
  if path.endswith(".gz") or size <= unit_bytes:
    ranges = [(0, None)]
  else:
    count = sizes.ceil_div(size, unit_bytes)
    bounds = [size * i // count for i in range(count + 1)]
    ranges = list(zip(bounds[:-1], bounds[1:]))
  return [{"kind": "file", "path": path, "start": a, "end": b, "jsonl": jsonl, "role": role,
           "bytes": size} for a, b in ranges]


def plan_units(inputs: Sequence[str], validation_inputs: Sequence[str] = (), *,
               text_key: Optional[str] = None, tfds_data_dir: Optional[str] = None,
               unit_bytes: int = DEFAULT_UNIT_BYTES) -> List[dict]:
  """Work units (JSON-able dicts) of the inputs, in a fixed order."""
  if not inputs:
    raise ValueError("Pass at least one --input (files, globs or tfds:NAME:VERSION).")
  units = []
  for group, role in ((inputs, None), (validation_inputs, "validation")):
    for item in group:
      if item.startswith("tfds:"):
        units += _tfds_units(item[len("tfds:"):], tfds_data_dir, role, unit_bytes)
        continue
      for path in _glob(item):
        units += _file_units(path, role or ("train" if validation_inputs else "holdout"),
                             unit_bytes, text_key)
  return units


# ----------------------------------------------------------------------------- one unit


def _unit_documents(unit: dict, text_key: Optional[str], counters: corpus.ReadCounters,
                    digest) -> Iterator[str]:
  """The documents of a unit, in order (its raw bytes go into `digest`)."""
  if unit["kind"] == "file":
    for raw in corpus.read_lines(unit["path"], unit["start"], unit["end"]):
      digest.update(raw)
      document = corpus.parse_document(raw, unit["jsonl"], text_key, counters)
      if document is not None:
        yield document
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(unit["directory"])
  key = text_key or "text"
  if key not in builder.info.features:
    raise ValueError(f"TFDS dataset {unit['directory']} has no feature {key!r} (features: "
                     f"{sorted(builder.info.features)}); pass --text_key.")
  ds = builder.as_dataset(split=unit["split"], shuffle_files=False)
  for example in ds.as_numpy_iterator():
    raw = example[key]
    digest.update(raw + b"\n")
    # One TFDS example is one document, newlines and all.
    document = corpus.parse_document(raw, False, None, counters)
    if document is not None:
      yield document


def _encode_all(vocabulary, texts: Iterator[str]) -> Iterator[List[int]]:
  """Token ids of each text, in order: a batch encoder if the vocabulary has one, else its
  TF encoder (`encode_tf`) mapped over the stream (traced once)."""
  encode_batch = getattr(vocabulary, "encode_batch", None)
  if encode_batch is not None:
    batch = []
    for text in texts:
      batch.append(text)
      if len(batch) == _ENCODE_BATCH:
        yield from encode_batch(batch)
        batch = []
    if batch:
      yield from encode_batch(batch)
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ds = tf.data.Dataset.from_generator(lambda: texts, output_signature=tf.TensorSpec([], tf.string))
  ds = ds.map(vocabulary.encode_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  for ids in ds.as_numpy_iterator():
    yield ids.tolist()


def process_unit(index: int, *, units: Sequence[dict], output_dir: str, vocabulary: str,
                 text_key: Optional[str], holdout_every: int) -> dict:
  """Tokenizes unit `index` into one shard per split; writes and returns its record."""
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  unit, num_units = units[index], len(units)
  vocab = vocab_lib.get_vocabulary(vocabulary)
  dtype = prepared.token_dtype(vocab.vocab_size)
  name = prepared.part_name(index, num_units)
  out = epath.Path(output_dir)
  writers = {s: prepared.ShardWriter(out / s, name, dtype) for s in prepared.SPLITS}
  counters, digest = corpus.ReadCounters(), hashlib.sha256()
  empty = 0
  # Each unit holds out every holdout_every-th document from its own offset, so units
  # smaller than holdout_every still hold out 1 / holdout_every of the documents on average.
  offset = int(hashlib.sha256(json.dumps(unit, sort_keys=True).encode()).hexdigest(), 16) % max(
      holdout_every, 1)
  try:
    documents = _unit_documents(unit, text_key, counters, digest)
    for i, ids in enumerate(_encode_all(vocab, documents)):
      if not ids:
        empty += 1
        continue
      role = unit["role"]
      if role == "holdout":
        held = holdout_every > 0 and (i + offset) % holdout_every == holdout_every - 1
        role = "validation" if held else "train"
      writers[role].add(ids)
    shards = {s: w.commit() for s, w in writers.items()}
  except BaseException:
    for w in writers.values():
      w.abort()
    raise
  record = {"format": prepared.FORMAT, "unit": unit, "vocabulary": vocabulary,
            "vocab_size": int(vocab.vocab_size), "token_dtype": dtype.str,
            "text_key": text_key, "holdout_every": holdout_every, "shards": shards,
            "counters": dict(counters.as_dict(), empty_documents=empty),
            "fingerprint": digest.hexdigest()}
  prepared.write_json(prepared.unit_record_path(out, index, num_units), record)
  logging.info("Prepared unit %d/%d: %s", index + 1, num_units,
               {s: (v["documents"], v["tokens"]) for s, v in shards.items()})
  return record


def _finished(output_dir: str, index: int, units: Sequence[dict], vocabulary: str,
              text_key, holdout_every) -> Optional[dict]:
  """The unit's record if the unit is complete and was made from the same inputs and options."""
  path = prepared.unit_record_path(output_dir, index, len(units))
  if not path.exists():
    return None
  record = prepared.read_json(path)
  expected = {"format": prepared.FORMAT, "unit": units[index], "vocabulary": vocabulary,
              "text_key": text_key, "holdout_every": holdout_every}
  found = {k: record.get(k) for k in expected}
  if found != expected:
    raise ValueError(
        f"{output_dir} holds a preparation with other inputs or options ({path.name}: "
        f"vocabulary {record.get('vocabulary')!r}); use a new --output_dir or delete that one.")
  itemsize = np.dtype(record["token_dtype"]).itemsize
  for split, shard in record["shards"].items():
    base = epath.Path(output_dir) / split / shard["name"]
    sizes = {"tokens": shard["tokens"] * itemsize, "index": (shard["documents"] + 1) * 8}
    for suffix, size in sizes.items():
      file = epath.Path(f"{base}.{suffix}")
      if not size and not file.exists():
        continue  # an object store may keep no empty object
      if not file.exists() or file.stat().length != size:
        return None
    if not epath.Path(f"{base}.blocks").exists():
      return None
  return record


# ----------------------------------------------------------------------------- the pipeline


def _run_beam(todo: Sequence[int], kwargs: dict, beam_args: Sequence[str]) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  args = list(beam_args)
  if not any(a.startswith("--runner") for a in args):
    args = ["--runner=DirectRunner", f"--direct_num_workers={os.cpu_count() or 1}",
            "--direct_running_mode=multi_processing"] + args
  with beam.Pipeline(options=pipeline_options.PipelineOptions(args)) as pipeline:
    _ = (pipeline
         | "Units" >> beam.Create(list(todo))
         | "Spread" >> beam.Reshuffle()
         | "Tokenize" >> beam.Map(process_unit, **kwargs))


def input_name(unit: dict) -> str:
  """The input file (or TFDS dataset directory) a unit reads."""
  return unit["path"] if unit["kind"] == "file" else unit["directory"]


def _sum_counters(items) -> Dict[str, int]:
  total: Dict[str, int] = {}
  for counters in items:
    for k, v in counters.items():
      total[k] = total.get(k, 0) + v
  return total


def input_counters(records: Sequence[dict]) -> Dict[str, Dict[str, int]]:
  """{input file: its read counters, summed over its units}, in input order."""
  grouped: Dict[str, list] = {}
  for r in records:
    grouped.setdefault(input_name(r["unit"]), []).append(r["counters"])
  return {name: _sum_counters(items) for name, items in grouped.items()}


def check_inputs(by_input: Dict[str, Dict[str, int]], max_dropped_fraction: float,
                 limit_name: str, log: bool = True) -> None:
  """Logs what reading each input skipped or repaired; one line for a file past the limit."""
  for name, counters in by_input.items():
    corpus.check_bad_lines(name, counters, max_dropped_fraction, limit_name)
    if log and counters.get("bad_lines"):
      logging.warning("Corpus file %s: %s; %d of %d lines bad, within %s = %g.", name,
                      corpus.describe(counters), counters["bad_lines"], counters["lines"],
                      limit_name, max_dropped_fraction)
    elif log:
      logging.info("Corpus file %s: %s.", name, corpus.describe(counters))


def _manifest(records: Sequence[dict], *, inputs, validation_inputs, vocabulary, text_key,
              holdout_every) -> dict:
  splits = {}
  for split in prepared.SPLITS:
    shards = [r["shards"][split] for r in records]
    splits[split] = {"documents": sum(s["documents"] for s in shards),
                     "tokens": sum(s["tokens"] for s in shards),
                     "shards": [s for s in shards if s["documents"]]}
  fingerprint = hashlib.sha256(json.dumps(
      [[r["unit"], r["fingerprint"]] for r in records], sort_keys=True).encode()).hexdigest()
  return {
      "format": prepared.FORMAT,
      "vocabulary": {"spec": vocabulary, "vocab_size": records[0]["vocab_size"],
                     "token_dtype": records[0]["token_dtype"]},
      "source": {"inputs": list(inputs), "validation_inputs": list(validation_inputs),
                 "text_key": text_key, "holdout_every": holdout_every,
                 "units": len(records), "fingerprint": fingerprint},
      "splits": splits,
      "counters": _sum_counters(r["counters"] for r in records),
      "input_counters": input_counters(records),
  }


def prepare(inputs: Sequence[str], vocabulary: str, output_dir: str, *,
            validation_inputs: Sequence[str] = (), text_key: Optional[str] = None,
            holdout_every: int = DEFAULT_HOLDOUT_EVERY, unit_bytes: int = DEFAULT_UNIT_BYTES,
            tfds_data_dir: Optional[str] = None, beam_args: Optional[Sequence[str]] = None,
            in_process: bool = False,
            max_dropped_fraction: float = corpus.DEFAULT_MAX_DROPPED_FRACTION,
            limit_name: str = "--max_dropped_fraction") -> dict:
  """Prepares (or completes) `output_dir`; returns the manifest.

  `in_process` runs the units one after another in this process (the built-in corpus and
  `text:` tasks on first use); otherwise Beam runs them with `beam_args`. An input file with
  more than `max_dropped_fraction` bad lines stops it before the manifest is written
  (`corpus.TooManyBadLines`, naming the setting `limit_name`).
  """
  corpus.check_max_dropped_fraction(max_dropped_fraction, limit_name)
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  # A bad spec fails here, not in every worker; the canonical spec (configuration named) is
  # what the records and the manifest keep.
  vocabulary = vocab_lib.get_vocabulary(vocabulary).spec
  units = plan_units(inputs, validation_inputs, text_key=text_key, tfds_data_dir=tfds_data_dir,
                     unit_bytes=unit_bytes)
  out = epath.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  stale = [p.name for p in (out / prepared.UNITS_DIR).glob("unit-*.json")
           if not p.name.endswith(f"-of-{len(units):05d}.json")] if (
               out / prepared.UNITS_DIR).exists() else []
  if stale:
    raise ValueError(f"{output_dir} holds a preparation planned into other units ({stale[0]}); "
                     "use a new --output_dir or delete that one.")
  removed = prepared.remove_temporaries(out)
  if removed:
    logging.info("Deleted %d temporary files of an interrupted run in %s.", removed, output_dir)
  options = dict(vocabulary=vocabulary, text_key=text_key, holdout_every=holdout_every)
  records = {i: _finished(output_dir, i, units, **options) for i in range(len(units))}
  todo = [i for i, r in records.items() if r is None]
  logging.info("Preparing %s: %d units, %d already done.", output_dir, len(units),
               len(units) - len(todo))
  kwargs = dict(units=units, output_dir=os.fspath(output_dir), **options)
  if todo:
    if in_process:
      for i in todo:
        records[i] = process_unit(i, **kwargs)
    else:
      _run_beam(todo, kwargs, beam_args or [])
  records = {i: _finished(output_dir, i, units, **options) for i in range(len(units))}
  missing = [i for i, r in records.items() if r is None]
  if missing:
    raise gin_utils.RunFault(f"Units {missing[:5]} of {output_dir} did not finish; run the "
                             "same command again to complete them.")
  manifest = _manifest([records[i] for i in range(len(units))], inputs=inputs,
                       validation_inputs=validation_inputs, **options)
  check_inputs(manifest["input_counters"], max_dropped_fraction, limit_name)
  if not manifest["splits"]["train"]["tokens"]:
    raise ValueError(f"The inputs of {output_dir} hold no text (all documents empty?); check "
                     "--input and --text_key.")
  prepared.write_json(out / prepared.MANIFEST, manifest)
  return manifest


# ----------------------------------------------------------------------------- cached corpora


def cache_root() -> epath.Path:
  """Where corpora prepared on first use live: $GLM_JAX_CACHE_DIR or ~/.cache/glm_jax."""
  root = os.environ.get("GLM_JAX_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "glm_jax")
  return epath.Path(root) / "prepared"


def _file_fingerprint(path: str) -> list:
  stat = epath.Path(path).stat()
  return [os.fspath(path), int(stat.length), int(stat.mtime)]


def _vocabulary_fingerprint(spec: str) -> list:
  """The spec plus size/mtime of the file or folder it names (so an edited file re-prepares)."""
  out = [spec]
  _, _, rest = spec.partition(":")
  path = rest.split("@")[0]
  if path and epath.Path(path).exists():
    target = epath.Path(path)
    files = sorted(target.iterdir()) if target.is_dir() else [target]
    out += [_file_fingerprint(os.fspath(f)) for f in files if f.is_file()]
  return out


_REPORTED = set()  # cached corpora whose counters this process logged


def cached_corpus(train_files: Sequence[str], validation_files: Sequence[str],
                  vocabulary: str, *, text_key: Optional[str] = None,
                  holdout_every: int = DEFAULT_HOLDOUT_EVERY,
                  max_dropped_fraction: float = corpus.DEFAULT_MAX_DROPPED_FRACTION) -> str:
  """A prepared corpus of local/gs:// text files, prepared on first use in the cache.

  Each use checks the files' bad lines against `max_dropped_fraction` (gin
  MAX_DROPPED_FRACTION), also when the cache holds them already.
  """
  key = json.dumps({"format": prepared.FORMAT,
                    "train": [_file_fingerprint(p) for p in train_files],
                    "validation": [_file_fingerprint(p) for p in validation_files],
                    "vocabulary": _vocabulary_fingerprint(vocabulary), "text_key": text_key,
                    "holdout_every": 0 if validation_files else holdout_every}, sort_keys=True)
  directory = cache_root() / hashlib.sha256(key.encode()).hexdigest()[:24]
  if not (directory / prepared.MANIFEST).exists():
    start = time.perf_counter()
    logging.info("Preparing %s with %s into %s (first use).", list(train_files), vocabulary,
                 directory)
    prepare(list(train_files), vocabulary, os.fspath(directory),
            validation_inputs=list(validation_files), text_key=text_key,
            holdout_every=0 if validation_files else holdout_every, in_process=True,
            max_dropped_fraction=max_dropped_fraction, limit_name="MAX_DROPPED_FRACTION")
    prepared.write_json(directory / "cache_key.json", json.loads(key))
    logging.info("Prepared %s in %.1f s.", directory, time.perf_counter() - start)
  else:  # its counters are logged once per process
    corpus.check_max_dropped_fraction(max_dropped_fraction, "MAX_DROPPED_FRACTION")
    check_inputs(prepared.read_json(directory / prepared.MANIFEST).get("input_counters", {}),
                 max_dropped_fraction, "MAX_DROPPED_FRACTION", log=directory not in _REPORTED)
  _REPORTED.add(directory)
  return os.fspath(directory)


# ----------------------------------------------------------------------------- command line

def define_flags() -> None:
  """The command line's flags (defined only when run as a program: tasks.py imports us)."""
  flags.DEFINE_multi_string(
      "input", None, "Text / JSONL files or globs (comma-separated), or tfds:NAME:VERSION.")
  flags.DEFINE_multi_string("validation_input", [],
                            "Validation files or globs; default: hold out documents.")
  flags.DEFINE_string("vocabulary", "builtin",
                      "Vocabulary spec (glm_jax.data.vocab.get_vocabulary).")
  flags.DEFINE_string("output_dir", None, "The prepared corpus (local or gs://).")
  flags.DEFINE_string("text_key", None, "JSONL / TFDS text field (default 'text').")
  flags.DEFINE_integer(
      "holdout_every", DEFAULT_HOLDOUT_EVERY,
      "Without validation inputs, every N-th document of each unit is validation (0: none).")
  flags.DEFINE_integer("unit_bytes", DEFAULT_UNIT_BYTES,
                       "Bytes of an uncompressed file per work unit.")
  flags.DEFINE_string("tfds_data_dir", None,
                      "TFDS data dir of tfds: inputs (default $TFDS_DATA_DIR).")
  flags.DEFINE_float(
      "max_dropped_fraction", corpus.DEFAULT_MAX_DROPPED_FRACTION,
      "Stop when more than this fraction of an input file's lines are bad (invalid UTF-8, "
      "unparsable JSON); empty lines do not count.")


def _split_list(values: Optional[Sequence[str]]) -> List[str]:
  return [v for value in values or () for v in value.split(",") if v]


def main(argv: Sequence[str]) -> None:
  beam_args = list(argv[1:])
  if logging.get_verbosity() <= logging.INFO:
    import logging as std_logging  # pylint: disable=g-import-not-at-top
    std_logging.getLogger("apache_beam").setLevel(std_logging.WARNING)
  if not FLAGS.input or not FLAGS.output_dir:
    raise ValueError("prepare needs --input=FILES|tfds:NAME:VERSION and --output_dir=DIR.")
  start = time.perf_counter()
  manifest = prepare(_split_list(FLAGS.input), FLAGS.vocabulary, FLAGS.output_dir,
                     validation_inputs=_split_list(FLAGS.validation_input),
                     text_key=FLAGS.text_key, holdout_every=FLAGS.holdout_every,
                     unit_bytes=FLAGS.unit_bytes, tfds_data_dir=FLAGS.tfds_data_dir,
                     beam_args=beam_args, max_dropped_fraction=FLAGS.max_dropped_fraction)
  summary = {s: {k: v[k] for k in ("documents", "tokens")}
             for s, v in manifest["splits"].items()}
  print(json.dumps({"output_dir": FLAGS.output_dir, "splits": summary,
                    "vocabulary": manifest["vocabulary"], "counters": manifest["counters"],
                    "seconds": round(time.perf_counter() - start, 1)}, sort_keys=True))


if __name__ == "__main__":
  define_flags()
  gin_utils.run(main)
