"""`python -m glm_jax.convert`: a released checkpoint -> glm_jax, or glm_jax -> the HF hub layout.

  python -m glm_jax.convert --official=PATH --output_dir=DIR [--vocabulary=SPEC] [--num_heads=N]
  python -m glm_jax.convert --checkpoint=CKPT --hf_output_dir=DIR [--hf_dtype=float16]

PATH: any layout of glm_jax/convert/layouts.py (local or gs://). --vocabulary is required
unless the layout names it (a Hugging Face folder with its tokenizer files or our config.json
entry); --num_heads unless config.json states it.
"""

from __future__ import annotations

import re
import sys

from absl import flags

_OFFICIAL = flags.DEFINE_string(
    "official", None, "Checkpoint to import: a reference / DeepSpeed run or step folder, a "
    "Hugging Face folder, or one .pt / .bin / .safetensors / .npz / .index.json file.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the glm_jax checkpoint.")
_VOCABULARY = flags.DEFINE_string(
    "vocabulary", None, "Vocabulary spec stored with the checkpoint (glm_jax.data.vocab), e.g. "
    "'gpt2:DIR', 'roberta:DIR', 'chinese_sp:PATH@10b_chinese', 'wordpiece:PATH'.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None,
                                  "Attention heads (shapes do not tell; config.json does).")
_TAG = flags.DEFINE_string("tag", None, "Step folder to read instead of the one "
                           "latest_checkpointed_iteration.txt / latest names.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16", "float16"],
                                 "Parameter dtype to store (default: the checkpoint's own).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Compute dtype recorded in the config (default float32).")
_CHECK_VOCAB = flags.DEFINE_boolean(
    "check_vocab_size", True, "Refuse a vocabulary whose padded size differs from the "
    "embedding table (--nocheck_vocab_size for a stand-in vocabulary).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "glm_jax checkpoint to export (MODEL_DIR, step or params-only).")
_HF_OUTPUT_DIR = flags.DEFINE_string("hf_output_dir", None,
                                     "Where to write the Hugging Face hub layout.")
_HF_DTYPE = flags.DEFINE_enum("hf_dtype", None, ["float32", "bfloat16", "float16"],
                              "Dtype of the exported tensors (default: the params' own).")
_MAX_SHARD_SIZE = flags.DEFINE_string("max_shard_size", "5GB",
                                      "Largest safetensors shard of the export (e.g. 2GB, 500MB).")


def _bytes(text: str) -> int:
  match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", text.upper())
  if not match:
    raise ValueError(f"--max_shard_size={text!r} is not a size; write e.g. 5GB or 500MB.")
  return int(float(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[
      match.group(2)])


def _import() -> None:
  from glm_jax import convert  # pylint: disable=g-import-not-at-top
  from glm_jax.convert import keys  # pylint: disable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise ValueError("--output_dir is required with --official; pass where to write.")
  done = convert.convert_checkpoint(
      _OFFICIAL.value, _OUTPUT_DIR.value, vocabulary=_VOCABULARY.value,
      num_heads=_NUM_HEADS.value, tag=_TAG.value, param_dtype=_PARAM_DTYPE.value,
      dtype=_DTYPE.value, check_vocab_size=_CHECK_VOCAB.value, progress=sys.stderr.isatty())
  c = done.config
  if done.skipped:
    print(keys.skipped_line(done.skipped))
  print(f"Wrote {done.output_dir} from the {done.layout} layout: {c.num_layers} layers, hidden "
        f"{c.hidden_size}, {c.num_heads} heads, vocab {c.vocab_size}, max positions "
        f"{c.max_sequence_length}, {c.param_dtype} params; vocabulary {done.vocab_spec} "
        f"({'task masks' if done.task_mask else 'no task masks: [MASK] for every objective'}).")


def _export() -> None:
  from glm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from glm_jax.convert import hf  # pylint: disable=g-import-not-at-top
  params, config, spec, step = checkpoints.load_params(_CHECKPOINT.value)
  written = hf.save_hf(_HF_OUTPUT_DIR.value, config, params, spec, dtype=_HF_DTYPE.value,
                       max_shard_bytes=_bytes(_MAX_SHARD_SIZE.value))
  print(f"Wrote {_HF_OUTPUT_DIR.value} (step {step}, vocabulary {spec}): {', '.join(written)}. "
        "Add the hub's configuration_glm.py / modeling_glm.py / tokenization_glm.py to load it "
        "with transformers (trust_remote_code=True).")


def main(argv) -> None:
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.begin_cli(argv, "--official, --output_dir, --vocabulary")
  if bool(_OFFICIAL.value) == bool(_CHECKPOINT.value):
    raise ValueError("Pass --official=PATH (import into glm_jax) or --checkpoint=CKPT with "
                     "--hf_output_dir=DIR (export to the Hugging Face layout), not both.")
  if _NUM_HEADS.value is not None and _NUM_HEADS.value < 1:
    raise ValueError(f"--num_heads must be a positive integer, got {_NUM_HEADS.value}; pass the "
                     "checkpoint's attention head count.")
  if _OFFICIAL.value:
    _import()
  elif not _HF_OUTPUT_DIR.value:
    raise ValueError("--hf_output_dir is required with --checkpoint; pass where to write.")
  else:
    _export()


if __name__ == "__main__":
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.run(main)
