"""Tokenizers: exact ids, round trips, UNK, and a SavedModel that tokenizes raw strings."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from kerastx.config import TokenizerConfig
from kerastx.data import PAD, UNK, TagVocabulary, building, make_tokenizer
from kerastx.data import vocab as vocab_lib
from tests.data.conftest import write_lines

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "a fox and a dog are friends",
    "the dogs jumped over the foxes",
    "hello world",
] * 10
SYMBOLS = ["HH AH L OW", "W ER L D", "K AE T", "D AO G"] * 5
KINDS = ("chars", "words", "symbols", "wordpiece", "sentencepiece")


def _build(tmp_path, kind, texts, **settings):
    tok = TokenizerConfig(type=kind, **{"vocab_size": 60, **settings})
    path = str(tmp_path / f"{kind}{'.model' if kind == 'sentencepiece' else '.txt'}")
    building.build_vocab_file(path, texts, tok, seed=1)
    return make_tokenizer(kind, path, tok.lowercase, name=kind)


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    out = {k: _build(tmp, k, SYMBOLS if k == "symbols" else TEXT) for k in KINDS}
    out["chars_lower"] = _build(tmp / "..", "chars", ["abc"], lowercase=True)
    return out


def _strings(t):
    return [s.decode("utf-8") for s in t.numpy().tolist()]


def test_chars_vocabulary_order_and_ids(tmp_path):
    tok = _build(tmp_path, "chars", ["abba", "cab"])
    assert vocab_lib.read_entries(tok.path) == ["<pad>", "<s>", "</s>", "<unk>", "a", "b", "c"]
    assert tok.vocab_size == 7
    ids = tok.tokenize(tf.constant(["abc", "zab", ""]))
    assert ids.to_list() == [[4, 5, 6], [UNK, 4, 5], []]
    assert ids.dtype == tf.int32


def test_vocab_size_and_min_frequency_bound_the_vocabulary(tmp_path):
    tok = _build(tmp_path, "words", ["a a a b b c"], vocab_size=6, min_frequency=1)
    assert vocab_lib.read_entries(tok.path)[4:] == ["a", "b"]
    tok = _build(tmp_path, "symbols", ["a a a b b c"], vocab_size=60, min_frequency=2)
    assert vocab_lib.read_entries(tok.path)[4:] == ["a", "b"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_unk(toks, kind):
    tok = toks[kind]
    text = SYMBOLS[:4] if kind == "symbols" else ["the quick brown fox", "hello world", "a dog"]
    ids = tok.tokenize(tf.constant(text))
    assert _strings(tok.detokenize(ids)) == text
    assert _strings(tok.detokenize(ids.to_tensor())) == text
    assert not any(i in (PAD, 1, 2) for row in ids.to_list() for i in row)
    unknown = "HH QQ OW" if kind == "symbols" else "the fox \u00e9\u00e9"
    assert UNK in tok.tokenize(tf.constant([unknown])).to_list()[0]
    assert tok.vocab_size <= 64


def test_wordpiece_splits_unseen_words_into_pieces(toks):
    tok = toks["wordpiece"]
    entries = vocab_lib.read_entries(tok.path)
    assert entries[:4] == list(vocab_lib.SPECIALS)
    assert "##s" in entries
    ids = tok.tokenize(tf.constant(["foxes jumps"]))
    pieces = [entries[i] for i in ids.to_list()[0]]
    assert "".join(p.removeprefix("##") for p in pieces) == "foxesjumps"
    assert any(p.startswith("##") for p in pieces)


def test_detokenize_stops_at_eos_or_pad_and_skips_bos(toks):
    tok = toks["chars"]
    a, b = tok.tokenize(tf.constant(["ab"])).to_list()[0]
    ids = tf.constant([[1, a, b, 2, a], [a, 0, b, b, b], [b, a, a, a, a]])
    assert _strings(tok.detokenize(ids)) == ["ab", "a", "baaaa"]
    ragged = tf.ragged.constant([[a, 2, b], [b]])
    assert _strings(tok.detokenize(ragged)) == ["a", "b"]


def test_lowercase(toks):
    tok = toks["chars_lower"]
    assert tok.tokenize(tf.constant(["ABC"])).to_list() == [[4, 5, 6]]
    assert _strings(tok.detokenize(tok.tokenize(tf.constant(["CaB"])))) == ["cab"]


def test_tag_vocabulary(tmp_path):
    path = write_lines(tmp_path / "labels.txt", ["neg", "pos"])
    tags = TagVocabulary(path)
    assert len(tags) == 2 and tags.tags == ["neg", "pos"]
    assert tags.lookup(tf.constant(["pos", "neg", "meh"])).numpy().tolist() == [1, 0, -1]
    assert _strings(tags.names(tf.constant([1, 0, 5]))) == ["pos", "neg", ""]


def test_saved_model_tokenizes_raw_strings_without_python(toks, tmp_path):
    module = tf.Module()
    module.toks = {k: toks[k] for k in KINDS}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(strings):
        out = {}
        for k in KINDS:
            ids = module.toks[k].tokenize(strings)
            out[k + "_ids"] = ids.to_tensor()
            out[k + "_text"] = module.toks[k].detokenize(ids.to_tensor())
        return out

    module.serve = serve
    text = tf.constant(["the quick brown fox", "HH AH L OW"])
    expected = {k: v.numpy().tolist() for k, v in serve(text).items()}
    export = str(tmp_path / "saved")
    tf.saved_model.save(module, export)
    assets = sorted(os.listdir(os.path.join(export, "assets")))
    assert {"chars.txt", "words.txt", "symbols.txt", "wordpiece.txt", "sentencepiece.model"} <= (
        set(assets)
    )
    for k in KINDS:  # the loaded module must not read the original files
        os.rename(toks[k].path, toks[k].path + ".moved")
    try:
        loaded = tf.saved_model.load(export)
        got = {k: v.numpy().tolist() for k, v in loaded.serve(text).items()}
        assert got == expected
        for k in KINDS:
            ids = loaded.toks[k].tokenize(text)
            assert ids.to_list() == toks[k].tokenize(text).to_list()
            restored = loaded.toks[k].detokenize_ragged(ids)
            assert restored.numpy().tolist() == toks[k].detokenize(ids).numpy().tolist()
    finally:
        for k in KINDS:
            os.rename(toks[k].path + ".moved", toks[k].path)


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizers_survive_a_global_seed_reset(toks, kind):
    # `keras.utils.set_random_seed` (the trainer runs it after the data module is built)
    # clears TensorFlow's eager kernel cache; an eagerly created SentencePiece resource
    # was deleted with it ("Resource .../SentencepieceOp... does not exist").
    import keras

    text = tf.constant(["the cat sat"])
    before = toks[kind].tokenize(text).to_list()
    keras.utils.set_random_seed(1234)
    assert toks[kind].tokenize(text).to_list() == before
    assert _strings(toks[kind].detokenize(toks[kind].tokenize(text))) == _strings(
        toks[kind].detokenize(tf.ragged.constant(before))
    )
