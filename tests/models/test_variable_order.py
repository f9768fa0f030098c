"""The order, paths, shapes and dtypes of `model.variables` stay as they were.

Checkpoints restore by position (`VariableBag(model.variables)`), so a refactoring of
the models must not reorder, rename or add variables. `variable_order.json` was written
by this module (`python -m tests.models.test_variable_order`) from the models as they
were before the base constructor was split into helpers; regenerate it only for a
deliberate, documented change of the checkpoint layout.

Paths are written without the model's own name (Keras numbers it per process) and with
the process-wide number of each seed generator dropped (`seed_generator_7` ->
`seed_generator`).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest

from kerastx.models import DecoderLM, EncoderClassifier, Seq2SeqTransformer

FIXTURE = pathlib.Path(__file__).with_name("variable_order.json")

SMALL = {"d_model": 8, "num_heads": 2, "ffn_dim": 16}
TWO = {"num_encoder_layers": 2, "num_decoder_layers": 2}
MOE = {"num_experts": 2, "moe_every": 2}

# name -> (class, data-given sizes, options); together they reach every branch of build().
CASES = {
    "seq2seq_base": (Seq2SeqTransformer, (11, 13), {**TWO}),
    "seq2seq_all_learned_post_moe_ids": (
        Seq2SeqTransformer,
        (11, 11),
        {
            **TWO,
            **MOE,
            "share_embeddings": "all",
            "position_encoding": "learned",
            "max_length": 16,
            "norm_position": "post",
            "num_conditions": 3,
        },
    ),
    "seq2seq_target_output_rope_rms_swiglu_vector": (
        Seq2SeqTransformer,
        (11, 13),
        {
            **TWO,
            "share_embeddings": "target_output",
            "position_encoding": "rope",
            "norm": "rmsnorm",
            "activation": "swiglu",
            "condition_dim": 3,
        },
    ),
    "decoder_lm_base": (DecoderLM, (13,), {"num_layers": 2}),
    "decoder_lm_untied_learned_moe_ids": (
        DecoderLM,
        (13,),
        {
            "num_layers": 2,
            **MOE,
            "tie_embeddings": False,
            "position_encoding": "learned",
            "max_length": 16,
            "num_conditions": 3,
        },
    ),
    "decoder_lm_rope_post_vector": (
        DecoderLM,
        (13,),
        {"num_layers": 2, "position_encoding": "rope", "norm_position": "post", "condition_dim": 3},
    ),
    "encoder_classifier_base": (EncoderClassifier, (13, 3), {"num_layers": 2}),
    "encoder_classifier_learned_post_moe_vector": (
        EncoderClassifier,
        (13, 3),
        {
            "num_layers": 2,
            **MOE,
            "position_encoding": "learned",
            "max_length": 16,
            "norm_position": "post",
            "condition_dim": 3,
        },
    ),
    "encoder_classifier_rope_rms_ids": (
        EncoderClassifier,
        (13, 3),
        {"num_layers": 2, "position_encoding": "rope", "norm": "rmsnorm", "num_conditions": 3},
    ),
}


def _inputs(cls, options):
    ids = np.array([[5, 6, 2, 0]], "int32")
    if cls is Seq2SeqTransformer:
        inputs = {"source_ids": ids, "target_in_ids": np.array([[1, 5, 6, 0]], "int32")}
    elif cls is DecoderLM:
        inputs = {"token_ids": ids}
    else:
        inputs = {"source_ids": ids}
    if options.get("num_conditions"):
        inputs["condition"] = np.array([1], "int32")
    elif options.get("condition_dim"):
        inputs["condition"] = np.zeros((1, options["condition_dim"]), "float32")
    return inputs


def variable_layout(name):
    """`[[path, shape, dtype], ...]` of the case's built model, in `model.variables` order."""
    cls, sizes, options = CASES[name]
    model = cls(*sizes, **SMALL, **options)
    model(_inputs(cls, options), training=False)  # builds as `build_model` does
    layout = []
    for variable in model.variables:
        path = variable.path.split("/", 1)[1]  # without the model's name
        path = re.sub(r"\bseed_generator_\d+\b", "seed_generator", path)
        layout.append([path, list(variable.shape), str(variable.dtype)])
    return layout


@pytest.mark.parametrize("name", sorted(CASES))
def test_variable_order_is_unchanged(name):
    expected = json.loads(FIXTURE.read_text())[name]
    actual = variable_layout(name)
    assert len(actual) == len(expected), f"{len(actual)} variables, expected {len(expected)}"
    for position, (got, want) in enumerate(zip(actual, expected)):
        assert got == want, f"variable {position}: {got} != {want}"


def test_fixture_has_every_case():
    assert sorted(json.loads(FIXTURE.read_text())) == sorted(CASES)


if __name__ == "__main__":
    layouts = {name: variable_layout(name) for name in sorted(CASES)}
    FIXTURE.write_text(json.dumps(layouts, indent=1) + "\n")
    print(f"wrote {FIXTURE}: {sum(map(len, layouts.values()))} variables, {len(layouts)} cases")
