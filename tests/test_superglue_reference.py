"""SuperGLUE inputs, losses and metrics as the reference builds them, on hand-made examples.

The full reference inputs of real examples are compared in tests/test_parity_inputs.py; here
each rule is checked on its own with a word-level vocabulary (one id per whitespace word).
"""

import random

import jax
import numpy as np
import pytest

from glm_jax.data.special_tokens import SpecialTokens
from glm_jax.model import GLMConfig, init_params
from glm_jax.superglue import inputs, metrics, patterns, scoring
from glm_jax.superglue.cloze_model import ClozeModel


class WordVocab:
  """Each whitespace word is one id (stable per word); [MASK] is the mask id."""

  def __init__(self):
    self.special = SpecialTokens(pad=0, eos=1, cls=2, unk=3, mask=4, smask=5, gmask=6, sop=7,
                                 eop=8)
    self.ids = {}

  def encode(self, text):
    return [self.special.mask if w == "[MASK]" else self.ids.setdefault(w, 100 + len(self.ids))
            for w in text.split()]


def _ids(vocab, text):
  return vocab.encode(text)


def test_truncation_takes_the_last_shortenable_piece_of_the_longer_segment():
  vocab = WordVocab()
  record = {"idx": 0, "premise": "p1 p2 p3 p4 p5 p6", "hypothesis": "h1 h2 h3.",
            "label": "entailment"}
  e = patterns.render("rte", record)  # pattern 0: " h1 h2 h3 " ? | _ , " p1 .. p6 "
  full = patterns.encode(e, vocab, 64)
  # [CLS] " h1 h2 h3 " ? [MASK] , " p1 .. p6 " eos = 18 tokens, + sop = 19.
  assert len(full.part_a) == 18 and not full.truncated
  # 4 to drop: p6 p5 p4 (segment 1 has 6 shortenable tokens, segment 0 has 3), then 3 vs 3,
  # a tie, goes to segment 1 again: p3.
  cut = patterns.encode(e, vocab, 15)
  assert cut.truncated and list(cut.part_a) == [2] + _ids(vocab, '" h1 h2 h3 " ?') + [4] + (
      _ids(vocab, ', " p1 p2 "')) + [1]
  cut = patterns.encode(e, vocab, 12)  # 7 to drop: p6 p5 p4 p3 as above, then 3 > 2: h3,
  # 2 vs 2: p2, 2 > 1: h2
  assert list(cut.part_a) == [2] + _ids(vocab, '" h1 " ?') + [4] + _ids(vocab, ', " p1 "') + [1]
  assert cut.mask_position == 5


def test_multi_token_rows_are_truncated_for_their_own_answer():
  vocab = WordVocab()
  record = {"idx": 1, "premise": "a b c d e f.", "choice1": "Short.",
            "choice2": "A much longer choice here.", "question": "effect", "label": 0}
  e = patterns.render("copa", record)
  enc = patterns.encode(e, vocab, 24)
  assert e.candidates == (" short", " a much longer choice here")
  # Row 1's answer is 5 tokens + eop: its Part A loses more of the premise than row 0's.
  assert len(enc.part_a_of(0)) + len(enc.answers[0]) <= 24
  assert len(enc.part_a_of(1)) + len(enc.answers[1]) == 24
  assert len(enc.part_a_of(0)) > len(enc.part_a_of(1))
  batch = inputs.make_batch([enc], [0], sequence_length=24)
  for c in range(2):
    assert int(batch["sep"][0, c]) == len(enc.part_a_of(c))


def test_mask_is_the_last_mask_token_of_part_a():
  vocab = WordVocab()
  record = {"idx": 2, "passage": "text with [MASK] inside", "question": "is it",
            "label": True}
  enc = patterns.encode(patterns.render("boolq", record, pattern_id=0), vocab, 64)
  masks = [i for i, t in enumerate(enc.part_a) if t == vocab.special.mask]
  assert len(masks) == 2 and enc.mask_position == masks[-1]


def test_punctuation_standardization_and_copa_exception():
  assert patterns.standardize("\u201cit\u2019s\u201d \u2013 ok") == '"it\'s" - ok'
  cb = patterns.render("cb", {"idx": 0, "premise": "\u201cYes\u201d", "hypothesis": "It\u2019s",
                              "label": "neutral"})
  assert patterns.pattern_text(cb) == "It's?[MASK]. \"Yes\""
  copa = patterns.render("copa", {"idx": 0, "premise": "It\u2019s.", "choice1": "A.",
                                  "choice2": "B.", "question": "cause", "label": 1})
  assert "It\u2019s because[MASK]." in patterns.pattern_text(copa)


def test_wsc_pronoun_repair():
  words, index = patterns.wsc_words("Bob told Tom that he left", 3, "he")  # off by one
  assert index == 4 and words[index] == "he"
  words, index = patterns.wsc_words("Bob saw him.", 2, "him")  # glued punctuation: split
  assert words == ["Bob", "saw", "him", "."] and index == 2
  with pytest.raises(ValueError, match="pronoun"):
    patterns.wsc_words("Bob saw Tom", 1, "he")


def _wsc(label, rivals=None, idx=0):
  record = {"idx": idx, "text": "Bob told Tom he left", "span1_text": "Bob", "span2_text": "he",
            "span1_index": 0, "span2_index": 3, "label": label,
            "heuristic_candidates": ["Tom"]}
  if rivals is not None:
    record["candidates"] = rivals
  return record


def test_wsc_candidates_and_training_examples():
  assert patterns.render("wsc", _wsc(True)).candidates == (" Bob", " Tom")  # heuristic rival
  assert patterns.render("wsc", _wsc(True), wsc_candidates="record").candidates == (" Bob",)
  rivals = [f"r{i}" for i in range(11)]
  assert patterns.render("wsc", _wsc(True, rivals)).candidates[1:] == tuple(" " + r for r in rivals)
  train = inputs.training_examples("wsc", [_wsc(True, rivals), _wsc(False, idx=1)])
  # Only the true example; its 11 rivals in chunks of 9, the last topped up from the first.
  assert [e.label for e in train] == [0, 0]
  assert [c.strip() for c in train[0].candidates] == ["Bob"] + rivals[:9]
  assert [c.strip() for c in train[1].candidates] == ["Bob"] + rivals[9:] + rivals[:7]


def _record(idx, entities, answers):
  passage = " ".join(entities)
  spans, start = [], 0
  for e in entities:
    spans.append({"start": start, "end": start + len(e) - 1})
    start += len(e) + 1
  return {"idx": {"passage": idx, "query": idx}, "passage": passage,
          "query": "@placeholder won", "entities": entities, "answers": answers}


def test_record_training_examples_as_the_reference():
  a = _record(0, [f"E{i:02d}" for i in range(14)], ["E03", "E07"])
  b = _record(1, ["X", "Y", "Z"], ["Z"])
  c = _record(2, [f"F{i:02d}" for i in range(12)], ["F00"])
  train = inputs.training_examples("record", [a, b, c])
  assert [e.candidate_values[0] for e in train] == ["E03", "E07", "Z", "F00"]
  assert all(e.label == 0 and len(e.answers) == 1 for e in train)
  # Negatives never hold another gold answer; more than 9 are shuffled by one Random(42)
  # over the whole file, in order, and cut to 9.
  shuffler = random.Random(42)
  expected = []
  for entities, golds in ((a["entities"], a["answers"]), (a["entities"], a["answers"]),
                          (c["entities"], c["answers"])):
    others = [x for x in sorted(entities) if x not in golds]
    shuffler.shuffle(others)
    expected.append(others[:9])
  assert [list(train[i].candidate_values[1:]) for i in (0, 1, 3)] == expected
  assert list(train[2].candidate_values) == ["Z", "X", "Y"]  # 2 negatives: no shuffle
  # The evaluation form: one example per query, every entity (sorted) a candidate.
  evaluation = patterns.render("record", a)
  assert evaluation.candidate_values == tuple(sorted(a["entities"])) and evaluation.answers == (
      "E03", "E07")


def test_generative_layout_and_losses():
  vocab = WordVocab()
  cfg = GLMConfig(vocab_size=512, num_layers=1, hidden_size=32, num_heads=2,
                  max_sequence_length=64, initializer_std=0.2, embedding_dropout=0.0,
                  attention_dropout=0.0, hidden_dropout=0.0)
  params = init_params(cfg, jax.random.PRNGKey(0))
  examples = [patterns.render("wsc", _wsc(True, ["Tom", "Ann Lee"])),
              patterns.render("wsc", _wsc(False, ["Tom"], idx=1))]
  enc = [patterns.encode(e, vocab, 32) for e in examples]
  gen = inputs.make_batch(enc, inputs.batch_labels(examples, "generative"), sequence_length=32,
                          layout="generative")
  assert gen["tokens"].shape == (2, 32) and gen["label"].tolist() == [1, 0]
  assert scoring.layout_of(gen) == "generative"
  sep = int(gen["sep"][0])
  assert gen["targets"][0, sep:sep + 2].tolist() == list(enc[0].answers[0])  # " Bob" + eop
  model = ClozeModel(cfg, loss="generative")
  _, _, all_correct = scoring.generative_outputs(
      lambda *a, **k: model.module.apply({"params": params}, *a, **k), gen)
  acc_num, acc_den = model.eval_fn(params, gen)["accuracy"]
  assert float(acc_den) == 2
  assert float(acc_num) == sum(bool(c) == bool(l) for c, l in zip(np.asarray(all_correct),
                                                                   [1, 0]))
  # Separate layout: length penalty divides each score by its answer tokens; 'mix' subtracts
  # the gold score from the cross-entropy.
  sep_batch = inputs.make_batch(enc, [0, 0], sequence_length=32)
  plain = np.asarray(ClozeModel(cfg).score(params, sep_batch))
  penalized = np.asarray(ClozeModel(cfg, length_penalty=1.0).score(params, sep_batch))
  lengths = sep_batch["loss_weights"].sum(-1)
  valid = sep_batch["candidate_mask"] > 0
  np.testing.assert_allclose(penalized[valid], (plain / np.maximum(lengths, 1))[valid], rtol=1e-5)
  rng = jax.random.PRNGKey(1)
  ce, _ = ClozeModel(cfg, length_penalty=1.0).loss_fn(params, sep_batch, rng, deterministic=True)
  mix, _ = ClozeModel(cfg, length_penalty=1.0, loss="mix").loss_fn(params, sep_batch, rng,
                                                                   deterministic=True)
  assert float(mix) == pytest.approx(float(ce) - float(penalized[0, 0] + penalized[1, 0]),
                                     rel=1e-5)


def test_record_normalisation_transliterates():
  # The reference lower-cases through unidecode: accents and ß match their ASCII spelling.
  assert metrics.normalize_answer("The Zürich-Straße") == "zurichstrasse"
  out = metrics.compute("record", ["Zürich", "Jose"], [["Zurich"], ["José Mourinho"]])
  # q1: EM 1, F1 1; q2: EM 0, F1 = 2 * (1/1 * 1/2) / (1 + 1/2) = 2/3.
  assert out == {"exact_match": pytest.approx(0.5), "f1": pytest.approx((1 + 2 / 3) / 2)}


def test_cb_macro_f1_over_the_classes_present():
  labels = ["entailment", "entailment", "contradiction", "contradiction"]
  preds = ["entailment", "contradiction", "contradiction", "contradiction"]
  # neutral occurs in neither: sklearn's macro average (the reference's) leaves it out.
  # entailment: tp 1, fn 1 -> 2/3; contradiction: tp 2, fp 1 -> 4/5.
  assert metrics.compute("cb", preds, labels)["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_multirc_exact_match_groups_by_question_id():
  questions = [5, 5, 6, 6, 7]
  labels = [1, 0, 1, 1, 0]
  preds = [1, 0, 1, 0, 0]
  out = metrics.compute("multirc", preds, labels, questions)
  # Questions 5 and 7 fully right of 3 -> EM 2/3; tp 2, fn 1, fp 0 -> F1a 4/5.
  assert out == {"f1a": pytest.approx(0.8), "exact_match": pytest.approx(2 / 3)}
