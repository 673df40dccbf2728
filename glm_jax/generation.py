"""Text in, filled text out: `glm_jax.generate(texts, checkpoint=DIR)` (GLM_SPEC.md section 7).

Each text may hold mask tokens: `[MASK]`, and for a model trained with task masks (the
checkpoint's vocabulary, or `task_mask=`) also `[sMASK]` and `[gMASK]`. A text without one
gets the generation mask appended (` [gMASK]` with task masks, else ` [MASK]`). Part A is
`[CLS] text`, plus eos unless the text ends in `[gMASK]`, as the reference's
generate_samples.py; the blanks are filled left to right by `glm_jax.decoding` and written
back into the text.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from glm_jax import decoding, sizes
from glm_jax import task_mask as task_mask_lib

MASK_PATTERN = re.compile(r"\[(gMASK|sMASK|MASK)\]")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One tokenized prompt: Part A ids, mask indices in it and the text pieces around them."""

  tokens: Tuple[int, ...]
  mask_positions: Tuple[int, ...]
  pieces: Tuple[str, ...]  # len(mask_positions) + 1 text pieces around the masks


def build_prompt(text: str, vocabulary, task_mask: Optional[bool] = None) -> Prompt:
  """Tokenizes `text` with its mask tokens into a Part A (`[CLS] text [eos]`).

  `task_mask` None follows the vocabulary (see glm_jax/task_mask.py, TASK_MASK).
  """
  if not text.strip():
    raise ValueError("A prompt is empty; give some text (with [MASK], [sMASK] or [gMASK]).")
  special = task_mask_lib.special_tokens(vocabulary, task_mask)
  masks = MASK_PATTERN.findall(text)
  if not special.task_mask and set(masks) - {"MASK"}:
    raise ValueError(f"The prompt uses [{sorted(set(masks) - {'MASK'})[0]}], but this model was "
                     "trained without task masks (GLM-Base/Large/Doc/RoBERTa): use [MASK].")
  if not masks:
    text = text.rstrip() + (" [gMASK]" if special.task_mask else " [MASK]")
  mask_ids = {"MASK": special.mask, "sMASK": special.smask, "gMASK": special.gmask}
  tokens, positions, pieces = [special.cls], [], []
  last = 0
  for match in MASK_PATTERN.finditer(text):
    piece = text[last:match.start()]
    pieces.append(piece)
    if piece.strip():
      tokens.extend(int(t) for t in vocabulary.encode(piece))
    positions.append(len(tokens))
    tokens.append(mask_ids[match.group(1)])
    last = match.end()
  tail = text[last:]
  pieces.append(tail)
  if tail.strip():
    tokens.extend(int(t) for t in vocabulary.encode(tail))
  if not text.rstrip().endswith("[gMASK]"):  # the reference: only a trailing [gMASK] has none
    tokens.append(special.eos)
  return Prompt(tuple(tokens), tuple(positions), tuple(pieces))


def _bucket(length: int, limit: int) -> int:
  """Pads batch lengths to multiples of 32 so few programs are compiled."""
  return min(limit, max(32, sizes.round_up(length, 32)))


def batch_prompts(prompts: Sequence[Prompt], max_length: int):
  """Stacks prompts into (context [B, Tc], context_length [B], mask_positions [B, M], num_blanks)."""
  longest = max(len(p.tokens) for p in prompts)
  if longest > max_length:
    raise ValueError(f"A prompt has {longest} tokens but the model reads at most {max_length}; "
                     "shorten it.")
  width = _bucket(longest, max_length)
  masks = max(len(p.mask_positions) for p in prompts)
  context = np.zeros((len(prompts), width), np.int32)
  mask_positions = np.zeros((len(prompts), masks), np.int32)
  for i, p in enumerate(prompts):
    context[i, :len(p.tokens)] = p.tokens
    mask_positions[i, :len(p.mask_positions)] = p.mask_positions
    mask_positions[i, len(p.mask_positions):] = p.mask_positions[-1]
  lengths = np.array([len(p.tokens) for p in prompts], np.int32)
  num_blanks = np.array([len(p.mask_positions) for p in prompts], np.int32)
  return context, lengths, mask_positions, num_blanks


def fill_text(prompt: Prompt, fills: Sequence[str]) -> str:
  """Writes the fills into the prompt's text in place of its masks."""
  out = [prompt.pieces[0]]
  for i, piece in enumerate(prompt.pieces[1:]):
    fill = fills[i] if i < len(fills) else ""
    if out[-1] and not out[-1].endswith(" ") and fill:
      fill = " " + fill
    if piece and not piece.startswith((" ", ".", ",", "!", "?", ";", ":")) and fill:
      fill = fill + " "
    out.extend([fill, piece])
  return "".join(out).strip()


def load(checkpoint: str, partitioner=None):
  """(params, config, vocabulary) of a checkpoint (local or gs://) written by the trainer.

  The parameters are restored straight into their shardings on the partitioner's mesh
  (default: the active one, else all devices on the data axis).
  """
  from glm_jax import checkpoints, partitioning  # pylint: disable=g-import-not-at-top
  from glm_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  partitioner = partitioner or partitioning.active() or partitioning.Partitioner()
  params, config, vocab_spec, _ = checkpoints.load_sharded_params(checkpoint, partitioner)
  return params, config, vocab_lib.get_vocabulary(vocab_spec)


def generate(texts: Union[str, Sequence[str]], *, checkpoint: Optional[str] = None,
             params=None, config=None, vocabulary=None, strategy: str = "greedy",
             max_new_tokens: int = 64, min_length: int = 0, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 0.0, num_beams: int = 4,
             length_penalty: float = 1.0, no_repeat_ngram_size: int = 0, seed: int = 0,
             batch_size: int = 8, decode_config: Optional[decoding.DecodeConfig] = None,
             return_fills: bool = False, partitioner=None,
             task_mask: Optional[bool] = None):
  """Fills the masks of one text (returns a str) or of several (returns a list).

  Pass `checkpoint=DIR`, or `params`, `config` and `vocabulary` already loaded. With
  `return_fills=True` each result is (filled_text, [fill of each blank]). Decoding runs
  under the partitioner's mesh (default: the active one; with `checkpoint`, all devices on
  the data axis): every process of a multi-host run gets every result. `task_mask`
  overrides the checkpoint's task-mask flag (None: its vocabulary's).
  """
  from glm_jax import partitioning  # pylint: disable=g-import-not-at-top
  single = isinstance(texts, str)
  texts = [texts] if single else list(texts)
  if not texts:
    raise ValueError("No texts to fill; pass a string or a non-empty list of strings.")
  partitioner = partitioner or partitioning.active()
  if checkpoint is not None:
    partitioner = partitioner or partitioning.Partitioner()
    params, config, vocabulary = load(checkpoint, partitioner)
  if params is None or config is None or vocabulary is None:
    raise ValueError("Pass checkpoint=DIR, or params, config and vocabulary together.")
  if decode_config is None:
    decode_config = decoding.DecodeConfig(
        strategy=strategy, max_new_tokens=max_new_tokens, min_length=min_length,
        temperature=temperature, top_k=top_k, top_p=top_p, num_beams=num_beams,
        length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
  params, config = decoding.unstack_layers(params, config)
  prompts = [build_prompt(t, vocabulary, task_mask) for t in texts]
  results: List = []
  for start in range(0, len(prompts), batch_size):
    chunk = prompts[start:start + batch_size]
    context, lengths, mask_positions, num_blanks = batch_prompts(
        chunk, config.max_sequence_length)
    out = decoding.fill_blanks(params, config, vocabulary.special, context, lengths,
                               mask_positions, num_blanks, decode_config=decode_config,
                               seed=seed + start, partitioner=partitioner)
    tokens, out_lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i, prompt in enumerate(chunk):
      blanks = decoding.split_blanks(tokens[i], out_lengths[i], vocabulary.special,
                                     decode_config)
      fills = [vocabulary.decode(b).strip() for b in blanks]
      filled = fill_text(prompt, fills)
      results.append((filled, fills) if return_fills else filled)
  return results[0] if single else results

