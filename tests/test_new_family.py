"""A model family defined in this file, trained, evaluated, predicted and exported.

The proof of the task design (issue 12): a per-token tagger (each input word gets a
tag) is one `Task` subclass and one model class here, registered with
`kerastx.tasks.register`, and then goes through the public command line (`train`,
`evaluate`, `predict` from the run and from the export, `export`) without any change
to a file under `kerastx/`.

The synthetic task: words are letters a..j; the tag of a letter is V (a, e, i) or C,
so a sequence is right only if every tag is.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from kerastx import tasks
from kerastx.cli import main
from kerastx.layers import EncoderLayer

LETTERS = "abcdefghij"


def tags_of(word: str) -> str:
    return " ".join("V" if c in "aei" else "C" for c in word.split())


class TokenTagger(keras.Model):
    """Embeddings, learned positions, encoder layers and a per-token tag head."""

    def __init__(
        self, vocab_size, num_tags, d_model, num_heads, num_layers, ffn_dim, dropout, max_length
    ):
        super().__init__()
        self.d_model, self.num_layers = d_model, num_layers
        self.embedding = keras.layers.Embedding(vocab_size, d_model, name="token_embedding")
        self.positions = keras.layers.Embedding(max_length, d_model, name="position_embedding")
        self.encoder_layers = [
            EncoderLayer(num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout, name=f"encoder_{i}")
            for i in range(num_layers)
        ]
        self.head = keras.layers.Dense(num_tags, name="head")

    def call(self, inputs, training=False):
        ids = inputs["source_ids"]
        hidden = self.embedding(ids) + self.positions(ops.arange(ops.shape(ids)[1]))[None]
        for layer in self.encoder_layers:
            hidden = layer(hidden, padding_mask=ops.not_equal(ids, 0), training=training)
        return ops.cast(self.head(hidden), "float32")


def best_tags(model, source_ids):
    """Argmax tag ids at the word positions (0 at EOS and padding: detokenize stops)."""
    ids = tf.argmax(model({"source_ids": source_ids}, training=False), -1, output_type=tf.int32)
    return tf.where(source_ids > 3, ids, 0)


class TaggerExport(tf.Module):
    def __init__(self, model, source_tokenizer, target_tokenizer, limit, config_path):
        super().__init__()
        self.model_variables = list(model.variables)
        self.source_tokenizer, self.target_tokenizer = source_tokenizer, target_tokenizer
        self.config_file = tf.saved_model.Asset(config_path)
        from kerastx import inference

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tag(text):
            ids = inference.encode_source(source_tokenizer, text, limit)
            return {"output": target_tokenizer.detokenize(best_tags(model, ids))}

        self.tag = tag

    def signatures(self):
        return {"serving_default": self.tag}


class TaggerTask(tasks.Task):
    """Words in, one tag per word out."""

    fields = ("source", "target")
    target_vocabulary = "own"
    layout = {"source_ids": ("source", "eos"), "target_out_ids": ("target", "eos")}
    input_keys = ("source_ids",)
    label_key = "target_out_ids"
    source_key = "source_ids"
    model_keys = ("d_model", "num_heads", "num_layers", "ffn_dim", "dropout", "max_length")
    corpus_types = ("parallel",)
    decoded_metrics = ("accuracy",)

    @classmethod
    def default_metrics(cls, corpus_type):
        return ("accuracy",)

    def build_model(self, data):
        return TokenTagger(
            data.source_tokenizer.vocab_size,
            data.target_tokenizer.vocab_size,
            **self.model_arguments(),
        )

    def example_inputs(self):
        return {"source_ids": tf.constant([[5, 6, 2, 0]], tf.int32)}

    def _texts(self, data, source_ids):
        return [
            t.decode() for t in data.target_tokenizer.detokenize(best_tags(*source_ids)).numpy()
        ]

    def text_decoder(self, model, data, settings):
        return lambda rows: self._texts(data, (model, rows["source_ids"]))

    def predict(self, model, data, lines, settings, batch_size, jit=False):
        from kerastx import inference, predict

        limit = self.cfg.data.max_source_length
        ids = inference.encode_source(data.source_tokenizer, tf.constant(lines), limit)
        outputs = self._texts(data, (model, ids))
        return predict.Decoded([[o] for o in outputs], [[0.0] for _ in outputs])

    def predict_exported(self, loaded, lines, settings, batch_size):
        from kerastx import predict

        out = loaded.signatures["serving_default"](text=tf.constant(lines))["output"]
        return predict.Decoded([[o.decode()] for o in out.numpy()], [[0.0] for _ in lines])

    def export_module(self, model, data):
        config_path = os.path.join(self.cfg.run_dir, "config.yaml")
        limit = self.cfg.data.max_source_length
        return TaggerExport(model, data.source_tokenizer, data.target_tokenizer, limit, config_path)

    def parity_check(self, loaded, model, data, split, count):
        from kerastx import export, predict

        texts = predict.split_texts(data, split, count)
        return export.compare_predictions(self, loaded, model, data, texts)


@pytest.fixture(scope="module")
def tagger():
    tasks.register("tagger", TaggerTask)
    yield TaggerTask
    tasks.unregister("tagger")


def _corpus(directory, name, count, seed):
    rng = np.random.default_rng(seed)
    words = [" ".join(rng.choice(list(LETTERS), size=rng.integers(1, 8))) for _ in range(count)]
    paths = []
    for side, lines in (("src", words), ("tgt", [tags_of(w) for w in words])):
        path = os.path.join(directory, f"{name}.{side}")
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        paths.append(path)
    return paths, words


def _experiment(tmp_path):
    train, _ = _corpus(tmp_path, "train", 1500, 1)
    dev, _ = _corpus(tmp_path, "dev", 60, 2)
    test, words = _corpus(tmp_path, "test", 60, 3)
    path = tmp_path / "tagger.yaml"
    path.write_text(
        f"""
run_dir: {tmp_path / "run"}
data:
  train: [{{type: parallel, source: {train[0]}, target: {train[1]}}}]
  dev: {{type: parallel, source: {dev[0]}, target: {dev[1]}}}
  test: {{type: parallel, source: {test[0]}, target: {test[1]}}}
  source_tokenizer: {{type: words}}
  target_tokenizer: {{type: words}}
  max_source_length: 16
  max_target_length: 16
  batch_size: 512
model:
  type: tagger
  d_model: 32
  num_heads: 2
  num_layers: 1
  ffn_dim: 64
  dropout: 0.0
  max_length: 32
training:
  train_steps: 120
  learning_rate: 3.0e-3
  warmup_steps: 20
  checkpoint_every: 60
  log_every: 20
evaluation:
  every: 60
  best_metric: accuracy
decoding:
  max_length: 32
"""
    )
    return str(path), str(tmp_path / "run"), words


def test_a_family_defined_outside_the_package_runs_every_verb(tagger, tmp_path, capsys):
    experiment, run_dir, words = _experiment(tmp_path)
    assert main(["validate", experiment]) == 0
    assert main(["train", experiment]) == 0
    assert os.path.exists(os.path.join(run_dir, "export", "saved_model.pb"))
    capsys.readouterr()

    assert main(["evaluate", run_dir, "--split", "test"]) == 0
    assert "wrote" in capsys.readouterr().out
    import json

    with open(os.path.join(run_dir, "eval_test.json")) as f:
        results = json.load(f)
    assert results["accuracy"] >= 90.0, results
    assert results["decoded"] == len(set(words))

    inputs = tmp_path / "in.txt"
    inputs.write_text("".join(w + "\n" for w in words[:20]))
    outputs = {}
    for where in (run_dir, os.path.join(run_dir, "export")):
        out = tmp_path / f"out-{len(outputs)}.txt"
        assert main(["predict", where, "-i", str(inputs), "-o", str(out)]) == 0
        outputs[where] = out.read_text().splitlines()
    run_out, export_out = outputs.values()
    assert run_out == export_out
    assert len(run_out) == 20
    right = sum(o == tags_of(w) for o, w in zip(run_out, words[:20]))
    assert right >= 18

    assert main(["export", run_dir, "--output", str(tmp_path / "again")]) == 0
    assert "parity checked on 50 examples" in capsys.readouterr().out


def test_its_config_is_checked_like_a_builtin_family(tagger, tmp_path, capsys):
    experiment, _, _ = _experiment(tmp_path)
    # A key its model does not take, a corpus type it does not read, a metric it lacks.
    code = main(
        [
            "validate",
            experiment,
            "--set",
            "model.num_encoder_layers=2",
            "--set",
            "evaluation.best_metric=bleu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "model.num_encoder_layers: not used by model type 'tagger' (only by seq2seq)" in err
    assert "evaluation.best_metric: 'bleu' is not computed for this experiment" in err
    assert "it computes: loss, perplexity, token_accuracy, accuracy" in err
