"""Candidate scoring equals a direct computation from the network's log-probabilities."""

import functools

import jax
import numpy as np
import pytest

from glm_jax import convert
from glm_jax.model import GLM, GLMConfig, init_params
from glm_jax.superglue import inputs, patterns, scoring, sources
from glm_jax.superglue.cloze_model import ClozeModel
import reference_cases as ref
from test_superglue_support import FEWGLUE_DIR, SUPERGLUE_DIR, tiny_vocab

T = 96


@pytest.fixture(scope="module")
def setup():
  vocab = tiny_vocab()
  cfg = GLMConfig(vocab_size=1024, num_layers=2, hidden_size=32, num_heads=4,
                  max_sequence_length=256, initializer_std=0.2, embedding_dropout=0.0,
                  attention_dropout=0.0, hidden_dropout=0.0)
  return vocab, cfg, init_params(cfg, jax.random.PRNGKey(3))


def _examples(task, n, split="validation", directory=SUPERGLUE_DIR):
  records = sources.load_jsonl_records(task, split, directory)[:n]
  return [patterns.render(task, r) for r in records]


def _direct_score(cfg, params, enc, c, answer, length=256):
  """Sum of log p(answer tokens incl. eop) from one hand-built sequence [A, sop, answer[:-1]].

  Trailing zeros pad it to `length` (one compilation); they sit after every scored position.
  """
  a = list(enc.part_a_of(c))  # candidate c's row (each row is truncated for its answer)
  n = len(answer)
  pad = length - len(a) - n
  tokens = np.array([a + [enc.sop] + list(answer[:-1]) + [0] * pad], np.int32)
  pos = np.array([list(range(len(a))) + [enc.mask_position_of(c)] * n + [0] * pad], np.int32)
  block = np.array([[0] * len(a) + list(range(1, n + 1)) + [0] * pad], np.int32)
  logits = _apply(cfg, params, tokens, np.stack([pos, block], 1), np.array([len(a)], np.int32))
  logp = np.asarray(logits[0], np.float64)
  logp = logp - np.log(np.exp(logp - logp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - (
      logp.max(-1, keepdims=True))
  return sum(logp[len(a) + i, answer[i]] for i in range(n))


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, params, tokens, positions, sep):
  return GLM(cfg).apply({"params": params}, tokens, positions, sep=sep)


@pytest.mark.parametrize("task,directory,split", [("copa", SUPERGLUE_DIR, "validation"),
                                                  ("wsc", SUPERGLUE_DIR, "validation"),
                                                  ("record", FEWGLUE_DIR, "train")])
def test_multi_token_scores_match_direct_computation(setup, task, directory, split):
  vocab, cfg, params = setup
  examples = _examples(task, 2, split, directory)
  score = jax.jit(ClozeModel(cfg).score)
  length = 256 if task == "record" else T
  for layout in ("separate", "shared"):
    enc = [patterns.encode(e, vocab, length, shared_candidates=layout == "shared",
                           max_answer_length=6) for e in examples]
    batch = inputs.make_batch(enc, [max(e.label, 0) for e in examples], sequence_length=length,
                              batch_size=3, layout=layout)
    assert scoring.layout_of(batch) == layout
    scores = np.asarray(score(params, batch))
    assert scores.shape == (3, max(len(e.answers) for e in enc))
    for i, e in enumerate(enc):
      for c, answer in enumerate(e.answers[:3]):
        np.testing.assert_allclose(scores[i, c], _direct_score(cfg, params, e, c, answer),
                                   rtol=2e-5, atol=2e-4)
      assert np.all(scores[i, len(e.answers):] == scoring.INVALID_SCORE)


def test_verbalizer_scores_are_first_part_b_logits(setup):
  vocab, cfg, params = setup
  examples = _examples("rte", 3)
  enc = [patterns.encode(e, vocab, T) for e in examples]
  assert not any(e.multi_token for e in enc)
  batch = inputs.make_batch(enc, [e.label for e in examples], sequence_length=T, batch_size=4)
  scores = np.asarray(ClozeModel(cfg).score(params, batch))
  verbalizers = patterns.verbalizer_ids("rte", vocab)
  for i, e in enumerate(enc):
    a = list(e.part_a)
    tokens = np.array([a + [e.sop]], np.int32)
    positions = np.array([[list(range(len(a))) + [e.mask_position], [0] * len(a) + [1]]])
    logits = np.asarray(GLM(cfg).apply({"params": params}, tokens, positions.astype(np.int32),
                                       sep=np.array([len(a)], np.int32)))
    np.testing.assert_allclose(scores[i], logits[0, len(a), list(verbalizers)], rtol=1e-5,
                               atol=1e-5)
  # The padded fourth row has no candidates and zero weight.
  assert batch["example_weight"].tolist() == [1, 1, 1, 0]


def test_layout_follows_glm_fine_tuning_input(setup):
  vocab, _, _ = setup
  e = _examples("copa", 1)[0]
  enc = patterns.encode(e, vocab, T)
  batch = inputs.make_batch([enc], [e.label], sequence_length=T)
  a, answer = len(enc.part_a), enc.answers[1]
  assert enc.part_a[0] == vocab.special.cls and enc.part_a[-1] == vocab.special.eos
  assert [i for i, t in enumerate(enc.part_a) if t == vocab.special.mask] == [enc.mask_position]
  row = {k: v[0, 1] for k, v in batch.items() if k in ("tokens", "positions", "targets",
                                                        "loss_weights", "sep")}
  assert row["sep"] == a
  assert row["tokens"][a:a + len(answer)].tolist() == [vocab.special.sop] + list(answer[:-1])
  assert row["targets"][a:a + len(answer)].tolist() == list(answer)
  assert answer[-1] == vocab.special.eop
  assert row["positions"][0, :a].tolist() == list(range(a))
  assert row["positions"][0, a:a + len(answer)].tolist() == [enc.mask_position] * len(answer)
  assert row["positions"][1, a:a + len(answer)].tolist() == list(range(1, len(answer) + 1))
  assert row["loss_weights"].sum() == len(answer)


@pytest.mark.parity
@pytest.mark.parametrize("variant", ref.VARIANTS)
def test_scores_match_reference_multi_token_cloze(variant):
  """Both layouts reproduce the official GLMForMultiTokenClozeFast choice scores."""
  stress, full = variant
  cases, _ = ref.cases(stress, full)
  official = ref.state_dict(stress)
  cfg, params = convert.from_official_state_dict(official, num_heads=4, embedding_dropout=0.0,
                                                 attention_dropout=0.0, hidden_dropout=0.0)
  get = lambda k: cases["multi_token_cloze_fast/" + k]
  enc_ids, sep = get("enc_input_ids"), get("enc_attention_mask")
  dec_ids, dec_pos, targets, logit_mask = (get("dec_input_ids"), get("dec_position_ids"),
                                           get("dec_target_ids"), get("dec_logit_mask"))
  encoded = []
  for b in range(enc_ids.shape[0]):
    answers = tuple(tuple(int(t) for t in targets[b, c, :int(logit_mask[b, c].sum())])
                    for c in range(targets.shape[1]))
    encoded.append(patterns.EncodedCloze(
        parts_a=(tuple(int(t) for t in enc_ids[b, :sep[b]]),),
        mask_positions=(int(dec_pos[b, 0, 0, 0]),), answers=answers, multi_token=True,
        truncated=False, sop=996))
  model = ClozeModel(cfg)
  for layout in ("separate", "shared"):
    batch = inputs.make_batch(encoded, [0, 0], sequence_length=40, layout=layout)
    if layout == "separate":
      for b in range(2):
        for c in range(3):
          n = int(logit_mask[b, c].sum())
          a = int(sep[b])
          np.testing.assert_array_equal(batch["tokens"][b, c, a:a + n], dec_ids[b, c, :n])
          np.testing.assert_array_equal(batch["positions"][b, c, :, a:a + n],
                                        dec_pos[b, c, :, :n])
    np.testing.assert_allclose(np.asarray(model.score(params, batch)), get("choice_scores"),
                               rtol=1e-5, atol=1e-4)
