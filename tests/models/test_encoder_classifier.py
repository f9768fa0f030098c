"""EncoderClassifier: pooling, padding, conditions, saving, mixed precision."""

import keras
import numpy as np
import pytest

from kerastx.models import EncoderClassifier
from tests.testing import check_config, to_numpy

SMALL = {"d_model": 16, "num_heads": 2, "num_layers": 2, "ffn_dim": 32, "dropout": 0.0}
IDS = np.array([[5, 6, 7, 8, 2], [9, 4, 2, 0, 0], [3, 2, 0, 0, 0]], "int32")


@pytest.mark.parametrize("pooling", ["mean", "first", "max"])
def test_padding_invariance_for_each_pooling(pooling):
    model = EncoderClassifier(20, 3, **SMALL, pooling=pooling, num_experts=2, moe_every=1)
    out = to_numpy(model({"source_ids": IDS}))
    assert out.shape == (3, 3) and out.dtype == np.float32
    out_longer = to_numpy(model({"source_ids": np.pad(IDS, ((0, 0), (0, 4)))}))
    assert np.abs(out_longer - out).max() < 1e-5


def test_mean_pooling_averages_real_tokens_only():
    model = EncoderClassifier(20, 3, **SMALL, pooling="mean")
    model({"source_ids": IDS})
    # Replace the head by the identity on the first 3 features to read the pooled vector.
    kernel = np.zeros((16, 3), "float32")
    kernel[:3, :3] = np.eye(3)
    model.head.set_weights([kernel, np.zeros(3, "float32")])
    pooled = to_numpy(model({"source_ids": IDS}))
    # Row 2 has 2 real tokens: equal to pooling the unpadded row alone.
    alone = to_numpy(model({"source_ids": IDS[2:, :2]}))
    np.testing.assert_allclose(pooled[2], alone[0], atol=1e-5)


def test_condition_reaches_the_encoder():
    model = EncoderClassifier(20, 3, **SMALL, condition_dim=2)
    a = to_numpy(model({"source_ids": IDS, "condition": np.zeros((3, 2), "float32")}))
    b = to_numpy(model({"source_ids": IDS, "condition": np.ones((3, 2), "float32")}))
    assert np.abs(a - b).max() > 1e-4
    with pytest.raises(ValueError, match=r"a float vector of shape \(B, 2\)"):
        model({"source_ids": IDS})
    with pytest.raises(ValueError, match="takes no condition"):
        EncoderClassifier(20, 3, **SMALL)({"source_ids": IDS, "condition": np.zeros(3)})


def test_training_flag_reaches_dropout():
    model = EncoderClassifier(20, 3, **{**SMALL, "dropout": 0.4})
    inference = to_numpy(model({"source_ids": IDS}))
    np.testing.assert_array_equal(inference, to_numpy(model({"source_ids": IDS}, training=False)))
    assert np.abs(to_numpy(model({"source_ids": IDS}, training=True)) - inference).max() > 1e-4


def test_save_and_reload(tmp_path):
    model = EncoderClassifier(20, 3, **SMALL, num_conditions=4, position_encoding="learned")
    inputs = {"source_ids": IDS, "condition": np.array([0, 3, 1], "int32")}
    expected = to_numpy(model(inputs))
    path = str(tmp_path / "classifier.keras")
    model.save(path)
    np.testing.assert_array_equal(to_numpy(keras.saving.load_model(path)(inputs)), expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    model = EncoderClassifier(20, 3, **SMALL, dtype=policy, norm="rmsnorm")
    logits = model({"source_ids": IDS})
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(logits)))


def test_config_round_trip_and_bad_arguments():
    check_config(EncoderClassifier, {"vocab_size": 20, "num_classes": 3, **SMALL})
    with pytest.raises(ValueError, match="pooling must be one of"):
        EncoderClassifier(20, 3, pooling="cls")
    with pytest.raises(
        ValueError, match="num_classes must be a positive integer. Received: num_classes=0"
    ):
        EncoderClassifier(20, 0)
