r"""Fill the blanks of prompts with a trained checkpoint and print the filled text.

  python -m glm_jax.infer --checkpoint=runs/quickstart \
      --text="The capital of France is [MASK]." [--strategy=greedy|sample|beam]
  python -m glm_jax.infer --checkpoint=DIR --input_file=prompts.txt [--output_file=out.txt]

A prompt may hold [MASK], [sMASK] or [gMASK]; without one, [gMASK] is appended and the model
continues the text. `--input_file` holds one prompt per line (blank lines are skipped).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging  # pylint: disable=g-multiple-import

from glm_jax import console, host_memory  # pylint: disable=g-multiple-import

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (trainer output or convert).")
flags.DEFINE_string("text", None, "One prompt with [MASK] / [sMASK] / [gMASK] tokens.")
flags.DEFINE_string("input_file", None, "A file of prompts, one per line.")
flags.DEFINE_string("output_file", None, "Write the filled prompts here (one per line).")
flags.DEFINE_enum("strategy", "greedy", ["greedy", "sample", "beam"], "Decoding strategy.")
flags.DEFINE_integer("max_new_tokens", 64, "Most tokens per blank.")
flags.DEFINE_integer("min_length", 0, "Fewest tokens per blank.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", 0.0, "Nucleus sampling mass (0 = off).")
flags.DEFINE_integer("num_beams", 4, "Beams for --strategy=beam.")
flags.DEFINE_float("length_penalty", 1.0, "Beam score = log p / length ** length_penalty.")
flags.DEFINE_integer("no_repeat_ngram_size", 0, "Forbid repeating n-grams of this size.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 8, "Prompts decoded together.")
flags.DEFINE_boolean("show_fills", False, "Also print each blank's fill.")


def read_prompts() -> list:
  """The prompts named by --text / --input_file; ValueError / FileNotFoundError if none."""
  if bool(FLAGS.text) == bool(FLAGS.input_file):
    raise ValueError("Give exactly one of --text=\"... [MASK] ...\" or --input_file=PATH.")
  if FLAGS.text:
    return [FLAGS.text]
  if not os.path.isfile(FLAGS.input_file):
    raise FileNotFoundError(f"--input_file={FLAGS.input_file} does not exist.")
  with open(FLAGS.input_file, encoding="utf-8") as f:
    prompts = [line.rstrip("\n") for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"--input_file={FLAGS.input_file} has no prompts (one per line).")
  return prompts


def run() -> list:
  from glm_jax import generate as generate_lib  # pylint: disable=g-import-not-at-top
  if not FLAGS.checkpoint:
    raise ValueError("--checkpoint=DIR is required (a trainer or convert output directory).")
  if not os.path.exists(FLAGS.checkpoint):
    raise FileNotFoundError(f"--checkpoint={FLAGS.checkpoint} does not exist.")
  prompts = read_prompts()
  params, config, vocabulary = generate_lib.load(FLAGS.checkpoint)
  logging.info("Filling %d prompt(s) with %s decoding.", len(prompts), FLAGS.strategy)
  return generate_lib.generate(
      prompts, params=params, config=config, vocabulary=vocabulary, strategy=FLAGS.strategy,
      max_new_tokens=FLAGS.max_new_tokens, min_length=FLAGS.min_length,
      temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p,
      num_beams=FLAGS.num_beams, length_penalty=FLAGS.length_penalty,
      no_repeat_ngram_size=FLAGS.no_repeat_ngram_size, seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, return_fills=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    results = run()
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  lines = []
  for filled, fills in results:
    lines.append(filled)
    print(filled)
    if FLAGS.show_fills:
      for i, fill in enumerate(fills):
        print(f"  blank {i + 1}: {fill}")
  if FLAGS.output_file:
    with open(FLAGS.output_file, "w", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  host_memory.reexec_with_tuned_malloc()
  console.run(main)
