r"""Fill the blanks of prompts with a trained checkpoint and print the filled text.

  python -m glm_jax.infer --checkpoint=runs/quickstart \
      --text="The capital of France is [MASK]." [--strategy=greedy|sample|beam]
  python -m glm_jax.infer --checkpoint=DIR --input_file=prompts.txt [--output_file=out.txt]

A prompt may hold [MASK], and for a model trained with task masks [sMASK] or [gMASK]; without
one, the generation mask ([gMASK], or [MASK] without task masks) is appended and the model
continues the text. The task-mask flag comes with the checkpoint's vocabulary; --task_mask
overrides it. `--input_file` holds one prompt per line (blank lines are skipped). Every
path may be local or gs://. The parameters are restored straight into their shardings on
`--mesh` (e.g. fsdp:8 for a model that needs eight devices to fit) and decoded under it;
multi-host: --coordinator_address/--num_processes/--process_id or --multihost_auto.
"""

from __future__ import annotations

from absl import flags, logging  # pylint: disable=g-multiple-import

from glm_jax import distributed, gin_utils, paths
from glm_jax.kernels.cpu import host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (trainer output or convert).")
flags.DEFINE_string("text", None, "One prompt with [MASK] / [sMASK] / [gMASK] tokens.")
flags.DEFINE_string("input_file", None, "A file of prompts, one per line.")
flags.DEFINE_string("output_file", None, "Write the filled prompts here (one per line).")
flags.DEFINE_string("mesh", None, "Mesh sizes, e.g. fsdp:8 or data:2,tensor:4 (unnamed axes "
                    "1); default: every device on the data axis.")
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
flags.DEFINE_enum("task_mask", "auto", ["auto", "true", "false"], "Whether the model uses "
                  "[sMASK]/[gMASK] (auto: as the checkpoint's vocabulary says).")
distributed.define_flags()


def read_prompts() -> list:
  """The prompts named by --text / --input_file; ValueError / FileNotFoundError if none."""
  if bool(FLAGS.text) == bool(FLAGS.input_file):
    raise ValueError("Give exactly one of --text=\"... [MASK] ...\" or --input_file=PATH.")
  if FLAGS.text:
    return [FLAGS.text]
  path = paths.resolve(FLAGS.input_file)
  if not path.is_file():
    raise FileNotFoundError(f"--input_file={FLAGS.input_file} does not exist.")
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"--input_file={FLAGS.input_file} is not UTF-8 text ({e.reason} at byte "
                     f"{e.start}); pass a text file with one prompt per line.") from None
  prompts = [line for line in text.splitlines() if line.strip()]
  if not prompts:
    raise ValueError(f"--input_file={FLAGS.input_file} has no prompts (one per line).")
  return prompts


def run() -> list:
  from glm_jax import generation  # pylint: disable=g-import-not-at-top
  from glm_jax import partitioning  # pylint: disable=g-import-not-at-top
  from glm_jax.plan import parse_mesh  # pylint: disable=g-import-not-at-top
  if not FLAGS.checkpoint:
    raise ValueError("--checkpoint=DIR is required (a trainer or convert output directory).")
  if not paths.resolve(FLAGS.checkpoint).exists():
    raise FileNotFoundError(f"--checkpoint={FLAGS.checkpoint} does not exist.")
  prompts = read_prompts()
  from glm_jax import decoding  # pylint: disable=g-import-not-at-top
  try:  # every decoding flag is checked before the checkpoint is read
    decode_config = decoding.DecodeConfig(
        strategy=FLAGS.strategy, max_new_tokens=FLAGS.max_new_tokens,
        min_length=FLAGS.min_length, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
        top_p=FLAGS.top_p, num_beams=FLAGS.num_beams, length_penalty=FLAGS.length_penalty,
        no_repeat_ngram_size=FLAGS.no_repeat_ngram_size)
  except ValueError as e:
    raise ValueError(f"--{e}") from None
  if FLAGS.batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1, got {FLAGS.batch_size}.")
  mesh_config = parse_mesh(FLAGS.mesh) if FLAGS.mesh else partitioning.MeshConfig()
  partitioner = partitioning.Partitioner(mesh_config)
  params, config, vocabulary = generation.load(FLAGS.checkpoint, partitioner)
  logging.info("Filling %d prompt(s) with %s decoding.", len(prompts), FLAGS.strategy)
  return generation.generate(
      prompts, params=params, config=config, vocabulary=vocabulary,
      decode_config=decode_config, seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, return_fills=True, partitioner=partitioner,
      task_mask={"auto": None, "true": True, "false": False}[FLAGS.task_mask])


def main(argv):
  gin_utils.begin_cli(argv, "--checkpoint, --text, --input_file")
  distributed.initialize()
  results = run()
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:  # every process decoded the same prompts
    return
  lines = []
  for filled, fills in results:
    lines.append(filled)
    print(filled)
    if FLAGS.show_fills:
      for i, fill in enumerate(fills):
        print(f"  blank {i + 1}: {fill}")
  if FLAGS.output_file:
    paths.write_text(FLAGS.output_file, "\n".join(lines) + "\n")


if __name__ == "__main__":
  host_memory.reexec_with_tuned_malloc()
  gin_utils.run(main)
