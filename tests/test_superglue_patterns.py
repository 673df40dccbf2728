"""Every task's real examples render to the GLM_SPEC section 6 pattern with exactly one mask."""

import pytest

from glm_jax.superglue import patterns, sources
from test_superglue_support import FEWGLUE_DIR, SUPERGLUE_DIR, tiny_vocab

SPLITS = {  # (directory, split) of the test slices for each task
    "boolq": [(SUPERGLUE_DIR, "validation"), (FEWGLUE_DIR, "train")],
    "cb": [(SUPERGLUE_DIR, "validation"), (SUPERGLUE_DIR, "train"), (SUPERGLUE_DIR, "test")],
    "copa": [(SUPERGLUE_DIR, "validation"), (SUPERGLUE_DIR, "train")],
    "multirc": [(SUPERGLUE_DIR, "validation"), (FEWGLUE_DIR, "train")],
    "record": [(FEWGLUE_DIR, "train")],
    "rte": [(SUPERGLUE_DIR, "validation"), (SUPERGLUE_DIR, "train")],
    "wic": [(SUPERGLUE_DIR, "validation"), (SUPERGLUE_DIR, "train")],
    "wsc": [(SUPERGLUE_DIR, "validation"), (SUPERGLUE_DIR, "train"), (SUPERGLUE_DIR, "test")],
}


def _render_all(task):
  out = []
  for directory, split in SPLITS[task]:
    out += [patterns.render(task, r)
            for r in sources.load_jsonl_records(task, split, directory)]
  return out


def _first(task, split="validation", directory=SUPERGLUE_DIR):
  return patterns.render(task, sources.load_jsonl_records(task, split, directory)[0])


def test_short_patterns_render_exactly():
  cb = _first("cb")
  assert patterns.pattern_text(cb) == (
      "Valence was helping?[MASK]. Valence the void-brain, Valence the virtuous valet. Why "
      "couldn't the figger choose his own portion of titanic anatomy to shaft? Did he think he "
      "was helping?")
  assert cb.candidates == (" Yes", " No", " Maybe") and cb.label == 1
  rte = _first("rte")
  assert patterns.pattern_text(rte) == (
      '"Christopher Reeve had an accident" ?[MASK], "Dana Reeve, the widow of the actor '
      'Christopher Reeve, has died of lung cancer at age 44, according to the Christopher Reeve '
      'Foundation."')
  assert rte.candidates == (" Yes", " No") and rte.label_value == "not_entailment"
  copa = _first("copa")
  assert patterns.pattern_text(copa) == (
      '"the toilet filled with water" or "water flowed from the spout"? The man turned on the '
      "faucet, so[MASK].")
  assert copa.candidates == (" the toilet filled with water", " water flowed from the spout")
  assert copa.label == 1
  wic = _first("wic")
  assert patterns.pattern_text(wic) == (
      "An emerging professional class. Apologizing for losing your temper, even though you were "
      "badly provoked, showed real class. Does class have the same meaning in both sentences?"
      "[MASK]")
  assert wic.candidates == (" No", " Yes") and wic.label_value is False


def test_cause_question_of_copa_uses_because():
  copa = [e for e in _render_all("copa") if "because" in patterns.pattern_text(e)]
  assert copa and all(patterns.pattern_text(e).endswith(" because[MASK].") for e in copa)


def test_long_patterns_keep_their_frame():
  boolq = patterns.pattern_text(_first("boolq"))
  assert boolq.startswith("Based on the following passage does ethanol take more energy make "
                          "that produces?[MASK]. Ethanol fuel -- All biomass")
  multirc = _first("multirc")
  assert patterns.pattern_text(multirc).endswith(
      "This requires only a very small force. Question: Would the mass of a baseball affect how "
      "much force you have to use to pick it up? Is it No?[MASK].")
  record = _first("record", "train", FEWGLUE_DIR)
  text = patterns.pattern_text(record)
  assert text.endswith("the best thing was that[MASK] made it difficult.")
  assert "- Chelsea come from behind to beat Olimpija Ljubljana 2-1 in Slovenia" in text
  assert record.candidates[record.label] == " Olimpija Ljubljana"
  wsc = _first("wsc")
  assert patterns.pattern_text(wsc).endswith(
      "could take his claim away from *him* . Question: In the passage above, what does the "
      "pronoun '*him*' refer to? Answer:[MASK].")
  assert wsc.candidates[0] == " anyone" and wsc.label_value is False and wsc.label == -1


@pytest.mark.parametrize("task", sources.TASKS)
def test_every_example_has_exactly_one_mask(task):
  vocab = tiny_vocab()
  examples = _render_all(task)
  assert len(examples) >= 8
  for e in examples:
    assert sum(p.is_mask for p in e.parts) == 1
    assert patterns.pattern_text(e).count(patterns.MASK_TEXT) == 1
    assert len(e.candidates) >= 2 and len(e.candidates) == len(e.candidate_values)
    enc = patterns.encode(e, vocab, 512 if task in ("record", "multirc", "boolq") else 256)
    assert enc.part_a.count(vocab.special.mask) == 1
    assert enc.part_a[enc.mask_position] == vocab.special.mask
    assert enc.multi_token == (task in patterns.MULTI_TOKEN_TASKS)


def test_truncation_cuts_the_passage_never_the_pattern():
  vocab = tiny_vocab()
  e = _first("boolq")
  full = patterns.encode(e, vocab, 4096)
  enc = patterns.encode(e, vocab, 64)
  assert enc.truncated and not full.truncated
  assert len(enc.part_a) + 1 == 64  # Part A + sop fills the sequence exactly
  frame = [t for p in e.parts[:5] for t in ([vocab.special.mask] if p.is_mask
                                              else vocab.encode(p.text))]
  # The question and frame are intact; the passage keeps its beginning.
  assert list(enc.part_a[1:1 + len(frame)]) == frame
  assert list(enc.part_a[:-1]) == list(full.part_a[:62])
  with pytest.raises(ValueError, match="sequence_length"):
    patterns.encode(_first("copa"), vocab, 8)


def test_multi_token_answers_end_with_eop():
  vocab = tiny_vocab()
  e = _first("copa")
  enc = patterns.encode(e, vocab, 128)
  for text, answer in zip(e.candidates, enc.answers):
    assert list(answer) == vocab.encode(text) + [vocab.special.eop]
