"""LAMBADA / WikiText / XSum rows, scoring and evaluators on a tiny random GLM."""

import json
import math

import jax
import numpy as np
import pytest

from glm_jax.lm_eval import blank_rows, detokenize, evaluate, lambada, wikitext, xsum
from glm_jax.model import GLM

from conftest import tiny_glm

PASSAGES = [
    "he opened the door and saw his old friend . `` hello , '' said the friend",
    "she could n't find her keys , so she looked under the table for the keys",
    "the dog ran across the field to fetch the ball",
]
WIKI = (" \n = Robert Boulter = \n \n Robert Boulter is an English film , television and "
        "theatre actor . He had a guest @-@ starring role on the television series The Bill "
        "in 2000 . \n This was followed by a starring role in the play Herons written by Simon "
        "Stephens , which was performed in 2001 at the Royal Court Theatre . \n")


@pytest.fixture(scope="module")
def vocab(builtin_vocab):
  return builtin_vocab


@pytest.fixture(scope="module")
def model(vocab):
  return tiny_glm(vocab.vocab_size, max_sequence_length=128, initializer_std=0.1, seed=0)


def test_infill_row_layout():
  row = blank_rows.infill_row([3, 11, 12, 6], 3, [7, 21, 22], [21, 22, 23], 10)
  np.testing.assert_array_equal(row["tokens"], [3, 11, 12, 6, 7, 21, 22, 0, 0, 0])
  np.testing.assert_array_equal(row["positions"][0], [0, 1, 2, 3, 3, 3, 3, 0, 0, 0])
  np.testing.assert_array_equal(row["positions"][1], [0, 0, 0, 0, 1, 2, 3, 0, 0, 0])
  np.testing.assert_array_equal(row["targets"], [0, 0, 0, 0, 21, 22, 23, 0, 0, 0])
  np.testing.assert_array_equal(row["loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
  assert row["sep"] == 4
  with pytest.raises(ValueError, match="sequence length"):
    blank_rows.infill_row([1] * 8, 1, [7, 8, 9], [1, 2, 3], 10)


def test_detokenizers():
  assert detokenize.lambada("`` i 'll go , '' he said .") == '"i\'ll go," he said.'
  assert detokenize.wikitext("a guest @-@ starring role , in 1 @,@ 000 .") == \
      "a guest-starring role, in 1,000."


@pytest.mark.parametrize("bidirectional", [True, False])
def test_lambada_rows(vocab, bidirectional):
  special = vocab.special
  row = lambada.build_row(PASSAGES[0], vocab, sequence_length=64, bidirectional=bidirectional)
  answer = list(vocab.encode("friend"))
  sep = int(row["sep"])
  assert row["tokens"][0] == special.cls and row["tokens"][sep - 1] == special.gmask
  assert row["tokens"][sep] == special.sop
  weighted = row["targets"][row["loss_weights"] > 0].tolist()
  assert weighted == answer  # loss on the last word only, in both variants
  if bidirectional:
    assert sep > 10 and int(row["loss_weights"].sum()) == len(answer)
  else:
    assert sep == 2 and row["targets"][sep:].tolist().count(0) < len(row["targets"])
  short = lambada.build_row(PASSAGES[0], vocab, sequence_length=12)
  assert short["targets"][short["loss_weights"] > 0].tolist() == answer  # context cut left


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (50, 16, 4), (17, 8, 7), (5, 8, 3)])
def test_windows_predict_every_token_once(n, window, stride):
  seen = []
  for start, first, end in wikitext.window_spans(n, window, stride):
    assert end - start <= window and start < first <= end
    seen.extend(range(first, end))
  assert seen == list(range(1, n))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_wikitext_rows_cover_the_stream(vocab, bidirectional):
  tokens = wikitext.tokenize(WIKI, vocab)
  rows = wikitext.build_rows(tokens, vocab.special, window=16, stride=4,
                             bidirectional=bidirectional)
  predicted = np.concatenate([r["targets"][r["loss_weights"] > 0] for r in rows])
  np.testing.assert_array_equal(predicted, tokens[1:])
  assert all(r["tokens"].shape == (wikitext.row_length(16),) for r in rows)
  assert all(int(r["positions"][1].max()) <= 16 for r in rows)


def test_scores_match_a_direct_forward_pass(vocab, model):
  cfg, params = model
  rows = lambada.build_rows(PASSAGES, vocab, sequence_length=48)
  s = evaluate.score_rows(params, cfg, rows, batch_size=2)  # a padded last batch
  batch = blank_rows.stack_rows(rows)
  logits = np.asarray(GLM(cfg).apply({"params": params}, batch["tokens"], batch["positions"],
                                     sep=batch["sep"]))
  for i, row in enumerate(rows):
    w = row["loss_weights"] > 0
    logp = jax.nn.log_softmax(logits[i], -1)
    nll = -float(np.sum(np.asarray(logp)[np.arange(48), row["targets"]][w]))
    assert s["nll"][i] == pytest.approx(nll, rel=1e-5)
    assert s["weight"][i] == w.sum()
    assert s["correct"][i] == bool(np.all(logits[i].argmax(-1)[w] == row["targets"][w]))


def test_lambada_evaluator(vocab, model, tmp_path):
  cfg, params = model
  path = tmp_path / "lambada.txt"
  path.write_text("\n".join(PASSAGES) + "\n")
  m = evaluate.lambada(params, cfg, vocab, str(tmp_path / "out"), path=str(path),
                       sequence_length=48)
  assert m["lambada/num_examples"] == 3 and 0.0 <= m["lambada/accuracy"] <= 1.0
  assert 1.0 < m["lambada/word_token_ppl"] < 10 * cfg.vocab_size
  assert json.loads((tmp_path / "out" / "lambada.json").read_text()) == m
  with pytest.raises(FileNotFoundError, match="LAMBADA_PATH"):
    evaluate.lambada(params, cfg, vocab, None, path=str(tmp_path / "missing.txt"))


def test_wikitext_evaluator(vocab, model, tmp_path):
  cfg, params = model
  (tmp_path / "test.txt").write_text(WIKI)
  m = evaluate.wikitext(params, cfg, vocab, None, directory=str(tmp_path), window=32, stride=8)
  n_tok = m["wikitext2/num_tokens"]
  for v in ("bi", "uni"):
    assert m[f"wikitext2/{v}/predicted_tokens"] == n_tok - 1
    # One total loss, two units: log(word ppl) * words == log(token ppl) * tokens.
    assert math.log(m[f"wikitext2/{v}/word_ppl"]) * m["wikitext2/num_words"] == pytest.approx(
        math.log(m[f"wikitext2/{v}/token_ppl"]) * (n_tok - 1), rel=1e-5)
  # A random model is close to uniform over the vocabulary.
  assert 0.2 * cfg.vocab_size < m["wikitext2/bi/token_ppl"] < 5 * cfg.vocab_size


def test_xsum_rows_and_batches(vocab, tmp_path):
  path = tmp_path / "xsum.jsonl"
  with open(path, "w") as f:
    for i in range(260):
      f.write(json.dumps({"id": str(i), "document": f"story number {i} about a cat .",
                          "summary": f"a cat {i}."}) + "\n")
  special = vocab.special
  row = xsum.train_row("the cat sat .", "a cat sat.", vocab, sequence_length=32)
  sep = int(row["sep"])
  assert row["tokens"][:2].tolist() == [special.cls, special.smask]
  assert row["tokens"][sep] == special.sop and set(row["positions"][0, sep:sep + 3]) == {1}
  target = list(vocab.encode("a cat sat."))
  assert row["targets"][row["loss_weights"] > 0].tolist() == target + [special.eop]
  kw = dict(sequence_length=32, batch_size=4, seed=3, path=str(path), num_examples=10)
  first = list(xsum.get_batches("xsum", "train", num_batches=5, **kw))
  again = list(xsum.get_batches("xsum", "train", start_batch=2, num_batches=3, **kw))
  for a, b in zip(first[2:], again):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  halves = [next(xsum.get_batches("xsum", "train", start_batch=4, shard_index=s,
                                  num_shards=2, **kw)) for s in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["tokens"] for h in halves]),
                                first[4]["tokens"])
  # 10 examples, 4 rows a batch: the first 10 rows (2.5 batches) hold each example once.
  seen = np.concatenate([b["tokens"] for b in first])[:10]
  assert len({r.tobytes() for r in seen}) == 10
  with pytest.raises(ValueError, match="split"):
    xsum.read(str(path), "dev")


def test_rouge():
  same = evaluate.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert same == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  half = evaluate.rouge(["the cat"], ["the cat sat down"])
  assert 0 < half["rouge2"] < half["rouge1"] < 100


def test_xsum_evaluator(vocab, model, tmp_path):
  cfg, params = model
  path = tmp_path / "xsum.jsonl"
  with open(path, "w") as f:
    for i in range(3):
      f.write(json.dumps({"document": f"story {i} about a cat and a dog .",
                          "summary": "a cat and a dog."}) + "\n")
  dc = evaluate.decoding.DecodeConfig(strategy="beam", num_beams=2, max_new_tokens=4,
                                      min_length=2, no_repeat_ngram_size=3)
  m = evaluate.xsum(params, cfg, vocab, str(tmp_path), path=str(path), split=None,
                    decode_config=dc, source_length=64)
  assert m["xsum/num_examples"] == 3
  assert all(0.0 <= m[f"xsum/{k}"] <= 100.0 for k in ("rouge1", "rouge2", "rougeL"))
  lines = (tmp_path / "xsum_predictions.jsonl").read_text().splitlines()
  assert len(lines) == 3 and all(json.loads(l)["prediction"] for l in lines)


def test_seqio_tasks_yield_the_evaluator_rows(vocab, tmp_path):
  from glm_jax.lm_eval import tasks  # pylint: disable=g-import-not-at-top
  (tmp_path / "lambada.txt").write_text("\n".join(PASSAGES) + "\n")
  wiki = tmp_path / "wiki"
  wiki.mkdir()
  (wiki / "test.txt").write_text(WIKI)
  (wiki / "valid.txt").write_text(WIKI)
  with open(tmp_path / "xsum.jsonl", "w") as f:
    f.write(json.dumps({"document": "the cat sat .", "summary": "a cat."}) + "\n")
  names = tasks.register_tasks(lambada_path=str(tmp_path / "lambada.txt"),
                               wikitext_dir=str(wiki), xsum_path=str(tmp_path / "xsum.jsonl"),
                               lambada_length=48, wikitext_window=16, wikitext_stride=4,
                               xsum_length=32)
  assert set(names) == {"glm_lambada", "glm_lambada_uni", "glm_wikitext2",
                        "glm_wikitext2_uni", "glm_xsum"}
  got = tasks.task_rows("glm_lambada_uni", "test")
  want = blank_rows.stack_rows(lambada.build_rows(PASSAGES, vocab, sequence_length=48,
                                                  bidirectional=False))
  for k in blank_rows.FEATURES:
    np.testing.assert_array_equal(got[k], want[k])
  wiki_rows = tasks.task_rows("glm_wikitext2", "validation")
  assert wiki_rows["tokens"].shape[1] == wikitext.row_length(16)
  assert tasks.task_rows("glm_xsum", "validation")["tokens"].shape == (1, 32)
