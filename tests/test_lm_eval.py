"""LAMBADA / WikiText / XSum rows, scoring and evaluators on a tiny random GLM."""

import json
import math

import numpy as np
import pytest

from glm_jax.lm_eval import blank_rows, detokenize, evaluate, lambada, rouge, wikitext, xsum
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


def test_wikitext_detokenizer_rules():
  assert detokenize.wikitext("a guest @-@ starring role , in 1 @,@ 000 . Then") == \
      "a guest-starring role, in 1,000. Then"
  assert detokenize.wikitext(" = = Career = = \n ( born 1 @.@ 5 ) ") == " == Career ==\n(born 1.5) "
  assert detokenize.wikitext("the players ' union") == "the players' union"


def test_wikitext_whole_file_rules_pair_quotes_across_lines():
  raw = " the ships ' guns \n the ' main ' armour \n"
  # The whole file: the quote after "ships" pairs with the next line's first quote.
  assert detokenize.wikitext(raw) == " the ships'guns\nthe' main ' armour\n"
  assert wikitext.detokenized(raw, "reference") == detokenize.wikitext(raw)
  # Line by line (our default) each line keeps its own pairs.
  assert wikitext.detokenized(raw, "glm_jax") == "the ships' guns\nthe 'main' armour\n"


def test_wikitext_word_count_is_the_references():
  raw = " = A = \n \n B c . \n"
  # strip -> "= A = \n \n B c ." -> split(" "): = A = \n \n B c .  (8 pieces), minus 1.
  assert wikitext.num_original_tokens(raw) == 8 and wikitext.word_count(raw) == 7
  assert len(raw.split()) == 6  # whitespace words: not the reference's unit


@pytest.mark.parametrize("bidirectional", [True, False])
def test_lambada_rows(vocab, bidirectional):
  special = vocab.special
  row = lambada.build_row(*lambada.encode_passage(PASSAGES[0], vocab), special,
                          sequence_length=64, bidirectional=bidirectional)
  answer = list(vocab.encode(" friend"))
  context = list(vocab.encode(PASSAGES[0].rsplit(" ", 1)[0]))
  sep = int(row["sep"])
  # Part A = [CLS] context [gMASK] eos (the eos after the mask is still Part A).
  assert row["tokens"][0] == special.cls and row["tokens"][sep - 2] == special.gmask
  assert row["tokens"][sep - 1] == special.eos and row["tokens"][sep] == special.sop
  assert row["answer_ids"] == answer
  weighted = row["targets"][row["loss_weights"] > 0].tolist()
  assert weighted == answer  # loss on the last word only, in both variants
  assert set(row["positions"][0][sep:sep + len(answer)]) == {sep - 2}  # at the mask
  if bidirectional:
    assert sep == len(context) + 3 and int(row["loss_weights"].sum()) == len(answer)
  else:  # [CLS] c_1 MASK eos | sop c_2 ... c_n answer[:-1]
    assert sep == 4 and row["tokens"][1] == context[0]
    assert row["targets"][sep:sep + len(context) - 1 + len(answer)].tolist() == (
        context[1:] + answer)
  short = lambada.build_row(*lambada.encode_passage(PASSAGES[0], vocab), special,
                            sequence_length=12, bidirectional=bidirectional)
  assert short["targets"][short["loss_weights"] > 0].tolist() == answer  # context cut left
  assert int((short["tokens"] != 0).sum()) <= 12


def test_lambada_mask_follows_the_task_mask_flag(vocab):
  from glm_jax import task_mask  # pylint: disable=g-import-not-at-top
  plain = task_mask.special_tokens(vocab, False)
  row = lambada.build_row(*lambada.encode_passage(PASSAGES[1], vocab), plain,
                          sequence_length=64)
  assert row["tokens"][int(row["sep"]) - 2] == vocab.special.mask  # [MASK], no task masks


def test_lambada_reads_the_openai_jsonl_and_the_plain_text(tmp_path):
  (tmp_path / "lambada_test.jsonl").write_text(
      "".join(json.dumps({"text": p}) + "\n" for p in ["He said: \"Hi.\" Bye", "a b"]))
  (tmp_path / "plain.txt").write_text("he said hi\n\nsee you later\n")
  assert lambada.read(str(tmp_path / "lambada_test.jsonl")) == ['He said: "Hi." Bye', "a b"]
  assert lambada.read(str(tmp_path / "plain.txt")) == ["he said hi", "see you later"]
  assert lambada.split_passage('He said: "Hi." Bye ') == ('He said: "Hi."', "Bye")
  (tmp_path / "bad.jsonl").write_text('{"passage": "x y"}\n')
  with pytest.raises(ValueError, match="line 1"):
    lambada.read(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("n,window,overlap", [(10, 4, 2), (50, 16, 4), (17, 8, 7), (5, 8, 3),
                                              (1000, 511, 256)])
def test_windows_score_every_token_once(n, window, overlap):
  seen = []
  count = wikitext.num_windows(n, window, overlap)
  assert count == max(math.ceil(max(n - window, 0) / overlap) + 1, 1)
  for i in range(count):
    start, first, end = wikitext.window_span(i, n, window, overlap)
    assert end - start <= window and start < first < end and start == i * overlap
    seen.extend(range(first, end))
  assert seen == list(range(1, n))


def test_wikitext_window_layouts(vocab):
  special = vocab.special
  tokens = np.arange(100, 130, dtype=np.int32)  # 30 tokens; S = 10: W = 9 (reference), 8
  first = wikitext.window_row(tokens, 0, special, sequence_length=10, overlap=3,
                              convention="reference")
  assert first["tokens"].shape == (11,) and int(first["sep"]) == 3  # seq_length + 1 long
  assert first["tokens"].tolist() == [special.cls, 100, special.gmask, special.sop] + list(
      range(101, 108))
  assert first["targets"][3:].tolist() == list(range(101, 109))
  second = wikitext.window_row(tokens, 1, special, sequence_length=10, overlap=3,
                               convention="reference")  # tokens 103..111, 6 in Part A
  assert int(second["sep"]) == 8 and second["tokens"][1:7].tolist() == list(range(103, 109))
  assert second["targets"][second["loss_weights"] > 0].tolist() == [109, 110, 111]
  uni = wikitext.window_row(tokens, 1, special, sequence_length=10, overlap=3,
                            bidirectional=False, convention="reference")
  assert int(uni["sep"]) == 3 and uni["targets"][uni["loss_weights"] > 0].tolist() == [
      109, 110, 111]
  ours = wikitext.window_row(tokens, 1, special, sequence_length=10, overlap=3)
  assert ours["tokens"].shape == (10,)  # glm_jax: rows are sequence_length long
  assert wikitext.positions_needed(1024, "reference") == 1022


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("convention", wikitext.CONVENTIONS)
def test_wikitext_rows_cover_the_stream(vocab, bidirectional, convention):
  tokens = wikitext.tokenize(WIKI, vocab, convention)
  rows = wikitext.build_rows(tokens, vocab.special, sequence_length=16, overlap=4,
                             bidirectional=bidirectional, convention=convention)
  predicted = np.concatenate([r["targets"][r["loss_weights"] > 0] for r in rows])
  np.testing.assert_array_equal(predicted, tokens[1:])
  assert all(r["tokens"].shape == (wikitext.row_length(16, convention),) for r in rows)
  assert all(int(r["positions"][1].max()) <= wikitext.positions_needed(16, convention)
             for r in rows)


def _direct_scores(cfg, params, rows):
  """Per row (answer NLL, weight, every weighted target the argmax), one forward pass a row."""
  out = []
  for row in rows:
    logits = np.asarray(GLM(cfg).apply({"params": params}, row["tokens"][None],
                                       row["positions"][None], sep=np.array([row["sep"]])),
                        np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    w = row["loss_weights"] > 0
    nll = -float(logp[np.arange(len(row["targets"])), row["targets"]][w].sum())
    out.append((nll, int(w.sum()), bool(np.all(logits.argmax(-1)[w] == row["targets"][w]))))
  return out


def test_scores_match_a_direct_forward_pass(vocab, model):
  cfg, params = model
  rows = lambada.build_rows(PASSAGES, vocab, vocab.special, sequence_length=48)
  s = evaluate.score_rows(params, cfg, rows, batch_size=2)  # a padded last batch
  for i, (nll, weight, correct) in enumerate(_direct_scores(cfg, params, rows)):
    assert s["nll"][i] == pytest.approx(nll, rel=1e-5)
    assert s["weight"][i] == weight
    assert s["correct"][i] == correct


def _answerable(cfg, params, vocab, special, contexts, count):
  """`count` passages: a context + the one-token word the model predicts after it."""
  passages = []
  for context in contexts:
    probe = lambada.build_row(vocab.encode(context), [special.eos], special, sequence_length=48)
    logits = np.asarray(GLM(cfg).apply({"params": params}, probe["tokens"][None],
                                       probe["positions"][None], sep=np.array([probe["sep"]])))
    token = int(logits[0, int(probe["sep"])].argmax())  # the prediction after sop
    word = vocab.decode([token]).strip()
    if word.isalpha() and list(vocab.encode(" " + word)) == [token]:
      passages.append(f"{context} {word}")
  assert len(passages) >= count, passages
  return passages[:count]


def test_lambada_evaluator(vocab, model, tmp_path):
  from glm_jax import task_mask  # pylint: disable=g-import-not-at-top
  cfg, params = model
  special = task_mask.special_tokens(vocab)
  # The random model misses the three real passages' last words; two passages end in the word
  # it predicts (one token, so every answer token is the argmax).
  passages = PASSAGES + _answerable(cfg, params, vocab, special, [
      "she opened the", "the cat sat on the", "he looked at the", "they walked to the",
      "we found a", "it was a very"], count=2)
  path = tmp_path / "lambada.txt"
  path.write_text("\n".join(passages) + "\n")
  m = evaluate.lambada(params, cfg, vocab, str(tmp_path / "out"), path=str(path),
                       sequence_length=48)
  direct = _direct_scores(cfg, params, lambada.build_rows(passages, vocab, special,
                                                           sequence_length=48))
  assert [c for _, _, c in direct] == [False, False, False, True, True]
  assert m["lambada/num_examples"] == 5 and m["lambada/accuracy"] == pytest.approx(2 / 5)
  nll, weight = sum(d[0] for d in direct), sum(d[1] for d in direct)
  assert m["lambada/word_token_ppl"] == pytest.approx(math.exp(nll / weight), rel=1e-5)
  assert json.loads((tmp_path / "out" / "lambada.json").read_text()) == m
  with pytest.raises(FileNotFoundError, match="LAMBADA_PATH"):
    evaluate.lambada(params, cfg, vocab, None, path=str(tmp_path / "missing.txt"))


def test_wikitext_evaluator(vocab, model, tmp_path):
  cfg, params = model
  (tmp_path / "test.txt").write_text(WIKI)
  m = evaluate.wikitext(params, cfg, vocab, None, directory=str(tmp_path), sequence_length=32,
                        overlap=8)
  tokens = wikitext.tokenize(WIKI, vocab, "glm_jax")
  words = len(WIKI.strip().split(" ")) - 1  # the reference's count
  assert m["wikitext2/num_tokens"] == len(tokens) and m["wikitext2/num_words"] == words
  for v in ("bi", "uni"):
    rows = wikitext.build_rows(tokens, vocab.special, sequence_length=32, overlap=8,
                               bidirectional=v == "bi")
    direct = _direct_scores(cfg, params, rows)
    nll = sum(d[0] for d in direct)
    assert m[f"wikitext2/{v}/predicted_tokens"] == sum(d[1] for d in direct) == len(tokens) - 1
    assert m[f"wikitext2/{v}/token_ppl"] == pytest.approx(math.exp(nll / (len(tokens) - 1)),
                                                          rel=1e-5)
    assert m[f"wikitext2/{v}/word_ppl"] == pytest.approx(math.exp(nll / words), rel=1e-5)
  # The reference convention refuses windows beyond the position table; ours clips them.
  with pytest.raises(ValueError, match="WIKITEXT_SEQUENCE_LENGTH"):
    evaluate.wikitext(params, cfg, vocab, None, directory=str(tmp_path), sequence_length=1024,
                      convention="reference", variants=("bi",))
  clipped = evaluate.wikitext(params, cfg, vocab, None, directory=str(tmp_path),
                              sequence_length=1024, overlap=8, variants=("bi",))
  assert clipped["wikitext2/sequence_length"] == cfg.max_sequence_length


def test_xsum_rows_and_batches(vocab, tmp_path):
  path = tmp_path / "xsum.jsonl"
  with open(path, "w") as f:
    for i in range(260):
      f.write(json.dumps({"id": str(i), "document": f"story number {i}\n\n about a cat .",
                          "summary": f"a cat {i}."}) + "\n")
  assert xsum.read(str(path))[0] == ("story number 0 about a cat .", "a cat 0.")
  special = vocab.special
  row = xsum.train_row("the cat sat .", "a cat sat.", vocab, special, source_length=24,
                       target_length=8)
  source = list(vocab.encode(" the cat sat ."))
  head = [special.cls, special.smask] + list(vocab.encode(" Content:"))
  assert int(row["sep"]) == 24 and row["tokens"].shape == (32,)  # Part A padded to 24
  assert row["tokens"][:24].tolist() == head + source + [special.pad] * (
      24 - len(head) - len(source))
  assert row["positions"][0, :24].tolist() == list(range(24))  # positions through the padding
  target = list(vocab.encode(" a cat sat.")) + [special.eop]
  assert row["tokens"][24] == special.sop and set(row["positions"][0, 24:].tolist()) == {1}
  assert row["positions"][1, 24:].tolist() == list(range(1, 9))  # also on the padding
  assert row["targets"][row["loss_weights"] > 0].tolist() == target
  cut = xsum.train_row("the cat sat .", "a cat sat.", vocab, special, source_length=24,
                       target_length=3)
  assert cut["targets"][24:].tolist() == target[:3] and int(cut["loss_weights"].sum()) == 3
  context = xsum.context_row("the cat sat .", vocab, special, source_length=24)
  assert context["tokens"].tolist() == row["tokens"][:25].tolist()
  assert context["positions"][:, 24].tolist() == [1, 1] and int(context["sep"]) == 24
  kw = dict(sequence_length=32, target_length=8, batch_size=4, seed=3, path=str(path),
            num_examples=10)
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
  assert xsum.num_train_steps(str(path), epochs=6, batch_size=64) == 6 * math.ceil(60 / 64)
  with pytest.raises(ValueError, match="split"):
    xsum.read(str(path), "dev")


def test_rouge_hand_computed():
  pred, ref = "the cat sat on the mat today", "the cat sat on a mat"
  out = rouge.rouge([pred], [ref], fix=False)
  # unigrams: 5 shared of 7 / 6 -> F = 2 (5/7)(5/6) / (5/7 + 5/6) = 10/13; bigrams: the cat,
  # cat sat, sat on shared of 6 / 5 -> F = 6/11; LCS "the cat sat on mat" = 5 -> 10/13.
  assert out["rouge1"] == pytest.approx(100 * 10 / 13)
  assert out["rouge2"] == pytest.approx(100 * 6 / 11)
  assert out["rougeL"] == pytest.approx(100 * 10 / 13)
  same = rouge.rouge(["the cat sat on the mat"], ["the cat sat on the mat"])
  assert same == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
  # A prediction of four words or fewer is dropped by the reference's filter: 0.
  assert rouge.rouge(["the cat sat down"], ["the cat sat down"])["rouge1"] == 0.0


def test_rouge_preparation_is_the_references():
  assert rouge.fix_tokenization('he didn \' t say " yes " , it \' s 3 , 000 u . s . well - known') \
      == "he did n't say `` yes '' , it 's 3,000 u.s. well-known"
  # Parts are split at [SEP]; short parts and parts repeating > 70% of seen words go.
  assert rouge.prediction_text("a b c d e [SEP] x y [SEP] a b c d f") == "a b c d e"
  assert rouge.prediction_text("a b c d e [SEP] a b f g h") == "a b c d e\na b f g h"
  assert rouge.reference_text("first part [SEP] second") == "first part\nsecond"


def test_xsum_evaluator(vocab, model, tmp_path):
  cfg, params = model
  documents = [f"story {i} about a cat and a dog ." for i in range(3)]

  def run(summaries, output_dir):
    path = tmp_path / "xsum.jsonl"
    path.write_text("".join(json.dumps({"document": d, "summary": s}) + "\n"
                            for d, s in zip(documents, summaries)))
    dc = evaluate.XSUM_DECODING.replace(num_beams=2, max_new_tokens=12, min_length=10)
    m = evaluate.xsum(params, cfg, vocab, str(output_dir), path=str(path), split=None,
                      decode_config=dc, source_length=64)
    lines = (output_dir / "xsum_predictions.jsonl").read_text().splitlines()
    return m, [json.loads(l) for l in lines]

  m, lines = run(["a cat and a dog."] * 3, tmp_path / "first")
  assert m["xsum/num_examples"] == 3 and len(lines) == 3
  assert lines[0]["reference"] == vocab.decode(vocab.encode("a cat and a dog."))
  predictions = [l["prediction"] for l in lines]
  assert all(len(p.split()) >= 5 for p in predictions), predictions  # kept by the filter
  # The summaries depend on the documents only. Scored against themselves (two examples) and
  # against words they do not use (one): each ROUGE F is 100, 100 and 0, mean 66.7.
  unrelated = "zebra quartz violin harbour meadow"
  assert not set(unrelated.split()) & set(predictions[2].lower().split())
  m, lines = run(predictions[:2] + [unrelated], tmp_path / "second")
  assert [l["prediction"] for l in lines] == predictions
  assert [l["reference"] for l in lines[:2]] == predictions[:2]
  for k in ("rouge1", "rouge2", "rougeL"):
    assert m[f"xsum/{k}"] == pytest.approx(200 / 3), k


def test_xsum_recipe_is_the_deepspeed_scripts(tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from glm_jax import gin_utils  # pylint: disable=g-import-not-at-top
  import glm_jax.train  # pylint: disable=g-import-not-at-top,unused-import
  path = tmp_path / "xsum.jsonl"
  path.write_text("".join(json.dumps({"document": f"d {i}", "summary": f"s {i}"}) + "\n"
                          for i in range(1000)))
  gin.clear_config()
  try:
    gin_utils.parse_gin(["configs/runs/finetune_xsum.gin"],
                        ["INIT_CHECKPOINT = '/ck'", "MODEL_DIR = '/tmp/xsum'",
                         f"XSUM_PATH = '{path}'"])
    macro = lambda n: (lambda v: v.scoped_configurable_fn() if hasattr(
        v, "scoped_configurable_fn") else v)(gin.query_parameter(f"%{n}"))
    # config_blocklm_10B_cnndm.json's optimizer, seq_xsum.sh's schedule and lengths.
    assert (macro("LEARNING_RATE"), macro("ADAM_B2"), macro("WEIGHT_DECAY")) == (5e-6, 0.95, 0.01)
    assert (macro("WARMUP_FRACTION"), macro("FINAL_LR_FRACTION"), macro("LABEL_SMOOTHING")) == (
        0.06, 0.1, 0.1)
    assert (macro("SEQUENCE_LENGTH"), macro("TARGET_LENGTH")) == (668, 60)
    assert macro("TRAIN_STEPS") == 6 * math.ceil(800 / 64)  # 6 epochs of the 800 train rows
  finally:
    gin.clear_config()
  assert xsum.source_length(668) == 608
  with pytest.raises(ValueError, match="TARGET_LENGTH"):
    xsum.source_length(60)
