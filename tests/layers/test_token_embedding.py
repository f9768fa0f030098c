"""TokenEmbedding: lookup, tied and untied float32 logits."""

import keras
import numpy as np
import pytest

from kerastx.layers import TokenEmbedding
from tests.testing import run_layer_test, to_numpy

IDS = np.array([[1, 5, 9, 0], [3, 3, 0, 0]], "int32")
HIDDEN = np.random.default_rng(0).normal(size=(2, 4, 8)).astype("float32")


def test_run_layer_test_lookup(tmp_path):
    run_layer_test(
        TokenEmbedding,
        {"vocab_size": 12, "embedding_dim": 8, "use_output_bias": False},
        {"inputs": IDS},
        expected_output_shape=(2, 4, 8),
        expected_num_trainable_weights=1,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("tie", [True, False])
def test_run_layer_test_logits(tie, tmp_path):
    run_layer_test(
        TokenEmbedding,
        {"vocab_size": 12, "embedding_dim": 8, "tie_weights": tie},
        {"inputs": HIDDEN},
        call_kwargs={"reverse": True},
        expected_output_shape=(2, 4, 12),
        expected_num_trainable_weights=2 if tie else 3,
        mixed_output_dtype="float32",  # logits stay float32
        # Untied: the embedding matrix is not read when projecting.
        run_training_check=tie,
        tmp_path=tmp_path,
    )


def test_lookup_and_tied_logits_values():
    layer = TokenEmbedding(12, 8)
    out = to_numpy(layer(IDS))
    table = to_numpy(layer.embeddings)
    np.testing.assert_array_equal(out, table[IDS])
    logits = to_numpy(layer(HIDDEN, reverse=True))
    np.testing.assert_allclose(logits, HIDDEN @ table.T + to_numpy(layer.output_bias), atol=1e-5)


def test_logits_are_float32_from_float32_weights_under_mixed_precision():
    layer = TokenEmbedding(12, 8, dtype="mixed_bfloat16")
    out = layer(IDS)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    logits = layer(HIDDEN, reverse=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    # Hidden states arrive in bfloat16 (the layer casts its inputs), but the table is
    # used in float32: the logits equal that float32 product.
    hidden = to_numpy(keras.ops.cast(keras.ops.cast(HIDDEN, "bfloat16"), "float32"))
    expected = hidden @ to_numpy(layer.embeddings).T
    np.testing.assert_allclose(to_numpy(logits), expected, atol=1e-5)


def test_bad_vocab_size():
    with pytest.raises(
        ValueError, match="vocab_size must be a positive integer. Received: vocab_size=0"
    ):
        TokenEmbedding(0, 8)
