"""Builds glm_jax/data/builtin/ from the raw Project Gutenberg books, deterministically.

  python tools/build_builtin_corpus.py [--source=../shared/data/gutenberg] [--output_dir=DIR]

Writes gutenberg_{train,validation}.txt.gz (one paragraph = one document per line,
headers/licence stripped), glm_spm_8k.model (SentencePiece, 8000 pieces, trained on the
train split only) and MANIFEST.json (books per split, source sha256, counts). The split is
by book; historical_documents/doctrina_christiana.txt (Tagalog/Spanish) is excluded.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import flags

from glm_jax import gin_utils
from glm_jax.data import corpus
from glm_jax.data import train_vocab

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SOURCE = flags.DEFINE_string(
    "source", os.path.join(os.path.dirname(_REPO_ROOT), "shared", "data", "gutenberg"),
    "Directory of the raw Gutenberg books (category/name.txt); default ../shared beside the "
    "checkout.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", corpus.BUILTIN_DIR, "Where the assets go.")
VOCAB_SIZE = 8000

# About 9.2 MB of text (3.4 MB gzipped) across every category of the source.
TRAIN_BOOKS = (
    "childrens_literature/grimms_fairy_tales.txt",
    "childrens_literature/wonderful_wizard_of_oz.txt",
    "classics/alice_in_wonderland.txt",
    "classics/christmas_carol.txt",
    "classics/dorian_gray.txt",
    "classics/dracula.txt",
    "classics/frankenstein.txt",
    "classics/huckleberry_finn.txt",
    "classics/jane_eyre.txt",
    "classics/jekyll_and_hyde.txt",
    "classics/pride_and_prejudice.txt",
    "classics/sherlock_holmes.txt",
    "classics/study_in_scarlet.txt",
    "classics/tale_of_two_cities.txt",
    "classics/tom_sawyer.txt",
    "drama/hamlet.txt",
    "drama/importance_of_being_earnest.txt",
    "essays/modest_proposal.txt",
    "historical_documents/art_of_war.txt",
    "historical_documents/frederick_douglass.txt",
    "philosophy/candide.txt",
    "philosophy/on_liberty.txt",
    "philosophy/the_prince.txt",
    "poetry/beowulf.txt",
    "science_fiction/time_machine.txt",
)
VALIDATION_BOOKS = (
    "classics/legend_of_sleepy_hollow.txt",
    "classics/metamorphosis.txt",
    "classics/yellow_wallpaper.txt",
    "drama/romeo_and_juliet.txt",
    "philosophy/problems_philosophy.txt",
)
EXCLUDED_BOOKS = ("historical_documents/doctrina_christiana.txt",)


def build(source: str, output: str, vocab_size: int, train_books=TRAIN_BOOKS,
          validation_books=VALIDATION_BOOKS) -> dict:
  """Writes the assets under `output` and returns the manifest (tests pass a few books)."""
  train_books, validation_books = tuple(train_books), tuple(validation_books)
  if set(train_books) & set(validation_books) or set(EXCLUDED_BOOKS) & set(
      train_books + validation_books):
    raise ValueError("A book is listed in two splits; fix TRAIN_BOOKS / VALIDATION_BOOKS.")
  os.makedirs(output, exist_ok=True)
  manifest = {"source": "Project Gutenberg books of ../shared/data/gutenberg",
              "document": "one paragraph of a book per line", "splits": {}}
  train_documents = []
  for split, books in (("train", train_books), ("validation", validation_books)):
    documents, entries = [], []
    for book in books:
      path = os.path.join(source, book)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; pass --source=DIR of the Gutenberg books.")
      with open(path, "rb") as f:
        raw = f.read()
      book_documents = corpus.gutenberg_documents(raw.decode("utf-8"))
      documents.extend(book_documents)
      entries.append({"book": book, "sha256": hashlib.sha256(raw).hexdigest(),
                      "documents": len(book_documents),
                      "characters": sum(len(d) for d in book_documents)})
    file_name = f"gutenberg_{split}.txt.gz"
    size = corpus.write_documents(os.path.join(output, file_name), documents)
    manifest["splits"][split] = {"file": file_name, "bytes": size, "books": entries,
                                 "documents": len(documents),
                                 "characters": sum(len(d) for d in documents)}
    if split == "train":
      train_documents = documents
  prefix = os.path.join(output, os.path.splitext(os.path.basename(corpus.BUILTIN_SPM_MODEL))[0])
  model_path = train_vocab.train_sentencepiece(train_documents, prefix, vocab_size,
                                               num_threads=1)
  os.remove(prefix + ".vocab")  # Readable copy not shipped; the .model holds everything.
  manifest["vocabulary"] = {"file": os.path.basename(model_path), "vocab_size": vocab_size,
                            "model_type": "unigram", "trained_on": "train"}
  manifest["excluded"] = list(EXCLUDED_BOOKS)
  with open(os.path.join(output, "MANIFEST.json"), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  return manifest


def main(argv):
  del argv
  manifest = build(_SOURCE.value, _OUTPUT_DIR.value, VOCAB_SIZE)
  for split, info in manifest["splits"].items():
    print(f"{split}: {len(info['books'])} books, {info['documents']} documents, "
          f"{info['characters']} characters, {info['bytes']} bytes gzipped")


if __name__ == "__main__":
  gin_utils.run(main)
