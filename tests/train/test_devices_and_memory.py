"""Devices, TPUs and models too big for the machine: one line each (issue 13, cases 6,
8, 12), and the closed-form parameter counts `validate` reads without TensorFlow."""

import dataclasses
import os

import pytest
import tensorflow as tf

from kerastx import cli, sizing, tasks
from kerastx.config.sections import ModelConfig
from kerastx.errors import KerastxError
from kerastx.models import DecoderLM, EncoderClassifier, Seq2SeqTransformer
from kerastx.models._base import SHARED_ARGUMENTS
from kerastx.train import strategy as strategy_lib
from tests.train import util

EXPERIMENT = os.path.join(util.ROOT, "experiments", "copy_task.yaml")
GiB = 2**30
SMALL = dict(
    d_model=16,
    num_heads=2,
    ffn_dim=24,
    num_encoder_layers=2,
    num_decoder_layers=3,
    num_layers=2,
    max_length=20,
)
# Every option that changes the count, one at a time (and two together).
VARIANTS = [
    {},
    {"norm": "rmsnorm"},
    {"norm_position": "post"},
    {"activation": "swiglu"},
    {"position_encoding": "learned"},
    {"position_encoding": "rope"},
    {"num_experts": 3, "moe_every": 1},
    {"num_experts": 4, "moe_every": 2, "activation": "swiglu"},
    {"num_conditions": 5},
    {"condition_dim": 7},
    {"share_embeddings": "target_output"},
    {"share_embeddings": "all"},
    {"tie_embeddings": False},
]


def _err_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("kerastx ")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: ",".join(map(str, v.items())) or "base")
def test_the_closed_form_counts_equal_count_params_of_built_models(variant):
    model = ModelConfig(**{**SMALL, **variant})
    shared = {name: getattr(model, name) for name in SHARED_ARGUMENTS}
    source, target = (30, 30) if model.share_embeddings == "all" else (30, 41)
    seq2seq = Seq2SeqTransformer(
        source,
        target,
        num_encoder_layers=model.num_encoder_layers,
        num_decoder_layers=model.num_decoder_layers,
        share_embeddings=model.share_embeddings,
        **shared,
    )
    lm = DecoderLM(37, num_layers=model.num_layers, tie_embeddings=model.tie_embeddings, **shared)
    classifier = EncoderClassifier(37, 5, num_layers=model.num_layers, **shared)
    for built in (seq2seq, lm, classifier):
        built.build(None)
    assert tasks.get("seq2seq").parameter_count(model, sizing.Sizes(source, target)) == (
        seq2seq.count_params()
    )
    assert tasks.get("decoder_lm").parameter_count(model, sizing.Sizes(37)) == lm.count_params()
    assert tasks.get("encoder_classifier").parameter_count(model, sizing.Sizes(37, classes=5)) == (
        classifier.count_params()
    )


def test_a_family_without_a_closed_form_gives_no_count():
    class Other(tasks.base.Task):
        pass

    assert Other.parameter_count(ModelConfig(), sizing.Sizes(10)) is None


def test_weights_and_optimizer_bytes():
    assert sizing.state_bytes(1000, "adam") == 12_000  # float32 weight + 2 moments
    assert sizing.state_bytes(1000, "adafactor") == 8_000  # + its velocity
    assert sizing.format_bytes(1.5 * GiB) == "1.5 GiB"
    assert sizing.format_bytes(3 * 2**40) == "3.0 TiB"


# copy_task.yaml with d_model 1e9: one shared table of V entries (tied output, its bias),
# 1 encoder + 1 decoder layer, ffn 64, pre-norm LayerNorm:
#   V d + V + (4 d^2 + 139 d + 64) + (8 d^2 + 145 d + 64)
BIG = 10**9
VALIDATE_COUNT = 12 * BIG**2 + (8000 + 139 + 145) * BIG + 8000 + 128  # V = 8000 configured
TRAIN_COUNT = 12 * BIG**2 + (24 + 139 + 145) * BIG + 24 + 128  # V = 24 symbols built


def test_validate_warns_when_weights_and_optimizer_exceed_the_machine(monkeypatch, capsys):
    monkeypatch.setattr(sizing, "machine_memory", lambda: 16 * GiB)
    assert cli.main(["validate", EXPERIMENT, "--set", f"model.d_model={BIG}"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# kerastx: valid (")
    assert VALIDATE_COUNT == 12_000_008_284_000_008_128
    assert err.splitlines() == [
        "kerastx validate: warning: model of 12,000,008,284,000,008,128 parameters "
        "(124.9 EiB for the weights and adam's state), counted with the configured sizes "
        "(data.source_tokenizer.vocab_size=8000): more than this machine's 16.0 GiB before "
        "any gradient or activation, so training will run out of memory; make the model "
        "smaller (model.d_model=1000000000, model.ffn_dim=64, model.num_encoder_layers=1, "
        "model.num_decoder_layers=1, or the vocabularies) or use a bigger machine"
    ]
    # A model that fits says nothing.
    assert cli.main(["validate", EXPERIMENT]) == 0
    assert capsys.readouterr().err == ""


def _train(run_dir, *extra):
    args = ["train", EXPERIMENT, "--set", f"run_dir={run_dir}"]
    for item in (*util.BASE, "data.dev=null", *extra):
        args += ["--set", item]
    return cli.main(args)


def test_a_model_too_big_for_the_machine_is_refused_before_building(tmp_path, monkeypatch, capsys):
    # Counted with the built vocabulary (24 symbols), before TensorFlow tries (its CPU
    # allocator retries for 10 s before it refuses the first (24, 1e9) table).
    monkeypatch.setattr(sizing, "machine_memory", lambda: 16 * GiB)
    run_dir = str(tmp_path / "run")
    assert _train(run_dir, f"model.d_model={BIG}", "data.train[0].num_examples=50") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert TRAIN_COUNT == 12_000_000_308_000_000_152
    assert _err_lines(err) == [
        "kerastx train: error: the model does not fit this machine: model of "
        "12,000,000,308,000,000,152 parameters (124.9 EiB for the weights and adam's state), "
        "more than its 16.0 GiB before any gradient or activation; make the model smaller "
        "(model.d_model=1000000000, model.ffn_dim=64, model.num_encoder_layers=1, "
        "model.num_decoder_layers=1, or the vocabularies) or use a bigger machine"
    ]
    assert not os.path.exists(os.path.join(run_dir, "checkpoints"))


OOM = (
    "{{function_node __wrapped__StatelessRandomNormalV2_device_/job:localhost/replica:0/"
    "task:0/device:CPU:0}} OOM when allocating tensor with shape[24,1000000000] and type "
    "float on /job:localhost/replica:0/task:0/device:CPU:0 by allocator mklcpu "
    "[Op:StatelessRandomNormalV2]"
)


@pytest.mark.parametrize(
    "error, detail",
    [
        (
            tf.errors.ResourceExhaustedError(None, None, OOM),
            "TensorFlow: OOM when allocating tensor with shape[24,1000000000] and type float",
        ),
        (
            MemoryError("Unable to allocate 96.0 GiB for an array with shape (24, 10**9)"),
            "numpy: Unable to allocate 96.0 GiB for an array with shape (24, 10**9)",
        ),
    ],
    ids=["tensorflow", "numpy"],
)
def test_an_allocation_failing_while_building_is_one_line(
    tmp_path, monkeypatch, capsys, error, detail
):
    # A model the closed form lets through (the memory is held by others, or a GPU's is
    # smaller) whose variables still cannot be allocated.
    from kerastx.train import loop

    def build_model(task, data, mixed_precision):
        raise error

    monkeypatch.setattr(loop, "build_model", build_model)
    monkeypatch.setattr(sizing, "machine_memory", lambda: 16 * GiB)
    assert _train(str(tmp_path / "run"), "data.train[0].num_examples=50") == 2
    # copy_task.yaml: d 32, ffn 64, 1 + 1 layers, 24 shared symbols:
    # 24 * 32 + 24 + (4 * 32^2 + 139 * 32 + 64) + (8 * 32^2 + 145 * 32 + 64)
    assert _err_lines(capsys.readouterr().err) == [
        "kerastx train: error: out of memory while creating the model's variables; model of "
        f"22,296 parameters (261.3 KiB for the weights and adam's state); this machine has "
        f"16.0 GiB; {detail}; make the model smaller (model.d_model=32, model.ffn_dim=64, "
        "model.num_encoder_layers=1, model.num_decoder_layers=1, or the vocabularies) or "
        "use a bigger machine"
    ]


# -- devices and TPUs ---------------------------------------------------------------------

HERE = ["/job:localhost/replica:0/task:0/device:CPU:0", "/device:GPU:0", "/device:GPU:1"]


def test_named_devices_are_checked_against_the_machine():
    assert strategy_lib.check_devices(["/gpu:1", "GPU:0", "/device:CPU:0"], HERE) == [
        "/gpu:1",
        "GPU:0",
        "/device:CPU:0",
    ]
    with pytest.raises(KerastxError) as info:
        strategy_lib.check_devices(["/gpu:0", "/gpu:7", "gpu7", "/gpu", "/gpu:x"], HERE)
    assert str(info.value).splitlines() == [
        "distribution.devices[1]: '/gpu:7': no such device on this machine; it has /cpu:0, "
        "/gpu:0, /gpu:1 (empty distribution.devices = all local GPUs, else the CPU)",
        "distribution.devices[2]: 'gpu7' is not the name of one device; write it as /gpu:0 "
        "or /cpu:0 (this machine has /cpu:0, /gpu:0, /gpu:1)",
        "distribution.devices[3]: '/gpu' is not the name of one device; write it as /gpu:0 "
        "or /cpu:0 (this machine has /cpu:0, /gpu:0, /gpu:1)",
        "distribution.devices[4]: '/gpu:x' is not the name of one device; write it as /gpu:0 "
        "or /cpu:0 (this machine has /cpu:0, /gpu:0, /gpu:1)",
    ]


def _local_names() -> str:
    specs = [tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()]
    return ", ".join(sorted(f"/{s.device_type.lower()}:{s.device_index}" for s in specs))


@pytest.mark.parametrize("strategy", ["one_device", "mirrored"])
def test_train_on_a_missing_device_is_an_error_naming_it(tmp_path, capsys, strategy):
    run_dir = str(tmp_path / "run")
    code = _train(run_dir, f"distribution.strategy={strategy}", "distribution.devices=[/gpu:97]")
    assert code == 2
    assert _err_lines(capsys.readouterr().err) == [
        f"kerastx train: error: distribution.devices[0]: '/gpu:97': no such device on this "
        f"machine; it has {_local_names()} (empty distribution.devices = all local GPUs, "
        f"else the CPU)"
    ]
    assert not os.path.exists(os.path.join(run_dir, "checkpoints"))


def test_tpu_without_a_tpu_is_one_line(tmp_path, capsys):
    assert _train(str(tmp_path / "run"), "distribution.strategy=tpu") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert _err_lines(err) == [
        "kerastx train: error: distribution.strategy=tpu: no TPU found (distribution.tpu=''): "
        "Please provide a TPU Name to connect to; set distribution.tpu to the TPU's name or "
        "grpc:// address, or use another distribution.strategy"
    ]


def test_tensorflow_reasons_are_cut_to_their_first_sentence():
    err = tf.errors.NotFoundError(
        None, None, "TPUs not found in the cluster. Failed in initialization: No OpKernel..."
    )
    assert strategy_lib.short_reason(err) == "TPUs not found in the cluster"
    assert strategy_lib.short_reason(ValueError("x" * 300)) == "x" * 157 + "..."
    assert strategy_lib.short_reason(OSError()) == "OSError"


def test_sizes_of_a_config_before_its_vocabularies_exist():
    cfg = util.make_cfg(
        "unused",
        "data.shared_vocab=false",
        "model.share_embeddings=none",
        "data.target_tokenizer.vocab_size=99",
    )
    sizes = sizing.configured_sizes(cfg, "own", labels=False)
    assert dataclasses.astuple(sizes) == (
        8000,
        99,
        None,
        "the configured sizes (data.source_tokenizer.vocab_size=8000, "
        "data.target_tokenizer.vocab_size=99)",
    )
