"""The run's variable manifest guards every restore; only unreadable checkpoints are skipped.

Trainer-level tests use the tiny copy task (one encoder and one decoder layer, width 32);
the rest use a one-layer Keras model and `Checkpoints` directly.
"""

import glob
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerastx.errors import KerastxError
from kerastx.train.checkpoints import (
    MANIFEST,
    CheckpointError,
    Checkpoints,
    ManifestMismatchError,
    VariableBag,
    manifest_difference,
    variable_manifest,
)
from kerastx.train.loop import Trainer
from tests.train.fakes import FakeData
from tests.train.util import make_cfg

CHANGED = "the model config changed since the run was trained"
FFN = "encoder_layer_0/feed_forward/inner_dense/kernel"


def _entry(path, shape, dtype="float32"):
    return {"path": path, "shape": list(shape), "dtype": dtype}


# -- the comparison, on exact manifests -----------------------------------------------


def test_equal_manifests_have_no_difference():
    manifest = [_entry("a/kernel", (2, 3)), _entry("a/bias", (3,))]
    assert manifest_difference(manifest, [dict(e) for e in manifest]) is None


def test_a_shape_difference_names_the_position_and_both_variables():
    stored = [_entry("a/kernel", (2, 3)), _entry("b/kernel", (256, 1024))]
    current = [_entry("a/kernel", (2, 3)), _entry("b/kernel", (256, 512))]
    assert manifest_difference(stored, current) == (
        "variable 1 is b/kernel (256, 1024) float32 in the checkpoint "
        "but b/kernel (256, 512) float32 in this model"
    )


def test_a_dtype_and_a_path_difference_are_named():
    assert manifest_difference([_entry("a", (2,))], [_entry("a", (2,), "float16")]) == (
        "variable 0 is a (2,) float32 in the checkpoint but a (2,) float16 in this model"
    )
    assert manifest_difference([_entry("a", ())], [_entry("b", ())]) == (
        "variable 0 is a () float32 in the checkpoint but b () float32 in this model"
    )


def test_a_count_difference_names_the_first_extra_variable():
    common = [_entry("a", (2,))]
    extra = _entry("b", (4,), "int64")
    assert manifest_difference(common, common + [extra]) == (
        "the checkpoint has 1 variables but this model has 2; "
        "variable 1 (b (4,) int64) is not in the checkpoint"
    )
    assert manifest_difference(common + [extra], common) == (
        "the checkpoint has 2 variables but this model has 1; "
        "variable 1 (b (4,) int64) is not in this model"
    )


def test_a_difference_before_a_count_difference_mentions_both():
    stored = [_entry("a", (2,)), _entry("b", (2,))]
    current = [_entry("c", (2,)), _entry("b", (2,)), _entry("d", (2,))]
    assert manifest_difference(stored, current) == (
        "variable 0 is a (2,) float32 in the checkpoint but c (2,) float32 in this model "
        "(the checkpoint has 2 variables, this model 3)"
    )


def test_renumbered_seed_generators_are_the_same_variable():
    # Keras numbers unnamed SeedGenerators from a process-wide counter.
    stored = [_entry("seed_generator/seed_generator_state", (2,), "int64")]
    stored.append(_entry("layer_0/seed_generator_3/seed_generator_state", (2,), "int64"))
    current = [_entry("seed_generator_14/seed_generator_state", (2,), "int64")]
    current.append(_entry("layer_0/seed_generator_17/seed_generator_state", (2,), "int64"))
    assert manifest_difference(stored, current) is None
    current[1] = _entry("layer_1/seed_generator_17/seed_generator_state", (2,), "int64")
    assert manifest_difference(stored, current) is not None


# -- the trainer: a changed model is refused before anything is read --------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step copy-task run (dropout on: seed generator variables) saved at step 4."""
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    Trainer(_cfg(run_dir, 4), data=FakeData(), progress=False).run()
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-4.index"))
    return run_dir


def _cfg(run_dir, steps, *overrides):
    return make_cfg(run_dir, f"training.train_steps={steps}", "model.dropout=0.1", *overrides)


def _copy(trained, tmp_path, config=True):
    """A copy of the trained run; without its `config.yaml` unless `config`.

    Without it the run-directory config check (kerastx.config.rundir) has nothing to
    compare, as where the model code changed: only the manifest can tell.
    """
    run_dir = str(tmp_path / "run")
    shutil.copytree(trained, run_dir)
    if not config:
        os.remove(os.path.join(run_dir, "config.yaml"))
    return run_dir


def _stored(run_dir):
    with open(os.path.join(run_dir, "checkpoints", MANIFEST), encoding="utf-8") as f:
        return json.load(f)["variables"]


def _no_reads(monkeypatch):
    def read(self, *args, **kwargs):
        raise AssertionError("a checkpoint was read despite the manifest mismatch")

    monkeypatch.setattr(tf.train.Checkpoint, "read", read)


def test_a_narrower_model_is_one_error_naming_the_variable(trained, tmp_path, monkeypatch):
    run_dir = _copy(trained, tmp_path, config=False)
    before = _stored(run_dir)
    position = [e["path"] for e in before].index(FFN)
    trainer = Trainer(_cfg(run_dir, 8, "model.ffn_dim=32"), data=FakeData(), progress=False)
    _no_reads(monkeypatch)
    with pytest.raises(ManifestMismatchError) as err:
        trainer.run()
    assert isinstance(err.value, KerastxError)
    manifest = os.path.join(run_dir, "checkpoints", MANIFEST)
    assert str(err.value) == (
        f"{manifest}: variable {position} is {FFN} (32, 64) float32 in the checkpoint "
        f"but {FFN} (32, 32) float32 in this model; {CHANGED}"
    )
    assert _stored(run_dir) == before  # the run's manifest is not replaced


def test_a_model_with_more_variables_is_a_count_mismatch(trained, tmp_path, monkeypatch):
    run_dir = _copy(trained, tmp_path, config=False)
    count = len(_stored(run_dir))
    cfg = _cfg(run_dir, 8, "model.num_decoder_layers=2")
    trainer = Trainer(cfg, data=FakeData(), progress=False)
    _no_reads(monkeypatch)
    with pytest.raises(ManifestMismatchError) as err:
        trainer.run()
    message = str(err.value)
    assert "\n" not in message
    assert "decoder_layer_1/" in message and message.endswith(CHANGED)
    assert f"(the checkpoint has {count} variables, this model {len(trainer.model.variables)})" in (
        message
    )


def test_the_same_model_in_the_same_process_resumes(trained, tmp_path):
    # This trainer's seed generators are numbered on from the fixture's: not a mismatch.
    run_dir = _copy(trained, tmp_path)
    trainer = Trainer(_cfg(run_dir, 8), data=FakeData(), progress=False)
    stored = [e["path"] for e in _stored(run_dir)]
    current = [e["path"] for e in variable_manifest(trainer.model)]
    assert "seed_generator" in " ".join(stored) and stored != current
    trainer.run()
    assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-8.index"))


def test_an_internal_error_inside_restore_propagates(trained, tmp_path, monkeypatch, caplog):
    run_dir = _copy(trained, tmp_path)
    trainer = Trainer(_cfg(run_dir, 8), data=FakeData(), progress=False)

    def read(self, *args, **kwargs):
        raise TypeError("a bug in the restore path")

    monkeypatch.setattr(tf.train.Checkpoint, "read", read)
    with pytest.raises(TypeError, match="a bug in the restore path"):
        trainer.run()
    assert "cannot be restored" not in caplog.text


# -- Checkpoints on a one-layer model ---------------------------------------------------


def _tiny(width=2, dtype="float32"):
    layer = keras.layers.Dense(width, name="proj", dtype=dtype)
    return keras.Sequential([keras.Input((3,)), layer], name="tiny")


def _checkpoints(run_dir, model, **extra):
    step = tf.Variable(0, dtype=tf.int64)
    objects = {"model": VariableBag(model.variables), "step": step, **extra}
    return Checkpoints(str(run_dir), objects, step, 3, manifest=variable_manifest(model)), step


def _save_two(run_dir):
    """Checkpoints at steps 1 and 2 of a model whose kernel holds the step number."""
    model = _tiny()
    ckpts, step = _checkpoints(run_dir, model)
    for number in (1, 2):
        step.assign(number)
        model.variables[0].assign(np.full((3, 2), float(number), np.float32))
        ckpts.save()
    return os.path.join(str(run_dir), "checkpoints")


def test_a_dtype_change_is_refused(tmp_path):
    _save_two(tmp_path)
    ckpts, _ = _checkpoints(tmp_path, _tiny(dtype="float64"))
    with pytest.raises(ManifestMismatchError) as err:
        ckpts.restore_latest()
    assert str(err.value) == (
        f"{tmp_path}/checkpoints/{MANIFEST}: variable 0 is proj/kernel (3, 2) float32 in the "
        f"checkpoint but proj/kernel (3, 2) float64 in this model; {CHANGED}"
    )


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _garbage(path):
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(size))


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0xFF]))


# What each damage raises in TF 2.21 (see checkpoints.READ_ERRORS).
DAMAGES = {
    "data truncated (IndexError)": ("data", lambda p: _truncate(p, os.path.getsize(p) // 2)),
    "data emptied (IndexError)": ("data", lambda p: _truncate(p, 0)),
    "data deleted (OpError)": ("data", os.remove),
    "data garbage (OpError)": ("data", _garbage),
    "data byte flipped (DataLossError)": ("data", _flip_byte),
    "index garbage (OpError)": ("index", _garbage),
    "index truncated (OpError)": ("index", lambda p: _truncate(p, os.path.getsize(p) // 2)),
    "index deleted (NotFoundError)": ("index", os.remove),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage, caplog):
    directory = _save_two(tmp_path)
    part, damage_fn = DAMAGES[damage]
    pattern = "ckpt-2.data-*" if part == "data" else "ckpt-2.index"
    damage_fn(glob.glob(os.path.join(directory, pattern))[0])
    model = _tiny()
    ckpts, step = _checkpoints(tmp_path, model)
    assert ckpts.restore_latest() == os.path.join(directory, "ckpt-1")
    assert int(step.numpy()) == 1 and float(model.variables[0].numpy()[0, 0]) == 1.0
    assert "ckpt-2 cannot be restored" in caplog.text


def test_no_undamaged_checkpoint_is_an_error(tmp_path):
    directory = _save_two(tmp_path)
    for path in glob.glob(os.path.join(directory, "ckpt-*.index")):
        _garbage(path)
    ckpts, _ = _checkpoints(tmp_path, _tiny())
    with pytest.raises(CheckpointError, match="no checkpoint can be restored"):
        ckpts.restore_latest()


def test_a_checkpoint_lacking_a_tracked_object_is_refused_at_once(tmp_path, caplog):
    _save_two(tmp_path)
    extra = tf.Variable(0.0)
    ckpts, _ = _checkpoints(tmp_path, _tiny(), extra=extra)
    with pytest.raises(CheckpointError, match="ckpt-2 does not hold every tracked object"):
        ckpts.restore_latest()
    assert "trying an older one" not in caplog.text


# -- writing the manifest ---------------------------------------------------------------


def _manifest_file(run_dir):
    return os.path.join(str(run_dir), "checkpoints", MANIFEST)


def test_the_manifest_is_written_once_and_not_rewritten_at_each_start(tmp_path):
    _save_two(tmp_path)
    path = _manifest_file(tmp_path)
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"variables": variable_manifest(_tiny())}
    before = os.stat(path)
    ckpts, _ = _checkpoints(tmp_path, _tiny())
    ckpts.restore_latest()
    _checkpoints(tmp_path, _tiny(width=5))  # a changed model does not replace it either
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not glob.glob(path + ".*")  # no temporary file left


def test_a_run_without_checkpoints_takes_the_new_models_manifest(tmp_path):
    _checkpoints(tmp_path, _tiny())
    _checkpoints(tmp_path, _tiny(width=5))  # nothing saved yet: nothing to protect
    with open(_manifest_file(tmp_path), encoding="utf-8") as f:
        assert json.load(f) == {"variables": variable_manifest(_tiny(width=5))}


def test_a_run_without_a_manifest_gets_one_after_a_restore(tmp_path):
    _save_two(tmp_path)
    os.remove(_manifest_file(tmp_path))
    ckpts, step = _checkpoints(tmp_path, _tiny())
    assert not os.path.exists(_manifest_file(tmp_path))  # unchecked yet: not written
    ckpts.restore_latest()
    assert int(step.numpy()) == 2
    with open(_manifest_file(tmp_path), encoding="utf-8") as f:
        assert json.load(f) == {"variables": variable_manifest(_tiny())}


def test_a_run_without_a_manifest_and_a_changed_model_gets_none(tmp_path):
    _save_two(tmp_path)
    os.remove(_manifest_file(tmp_path))
    ckpts, _ = _checkpoints(tmp_path, _tiny(width=5))
    with pytest.raises(CheckpointError, match="no checkpoint can be restored"):
        ckpts.restore_latest()
    assert not os.path.exists(_manifest_file(tmp_path))


def test_a_failed_manifest_write_leaves_the_old_file(tmp_path, monkeypatch):
    _checkpoints(tmp_path, _tiny())
    with open(_manifest_file(tmp_path), encoding="utf-8") as f:
        before = f.read()

    def replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        _checkpoints(tmp_path, _tiny(width=5))
    with open(_manifest_file(tmp_path), encoding="utf-8") as f:
        assert f.read() == before
    assert not glob.glob(_manifest_file(tmp_path) + ".*")


def test_a_damaged_manifest_is_an_error_naming_it(tmp_path):
    _save_two(tmp_path)
    with open(_manifest_file(tmp_path), "w", encoding="utf-8") as f:
        f.write('{"variables": [')
    with pytest.raises(CheckpointError, match=f"{MANIFEST}: not a variable manifest"):
        _checkpoints(tmp_path, _tiny())
