"""A training process instrumented at points inside its checkpoint writes (a child process
of tests/train/test_checkpoint_faults.py).

    python -m tests.train.checkpoint_fault_child MODE RUN_DIR SNAP_DIR STEP -- TRAIN_ARGS...

MODE `snapshot`: at every point, the run directory is copied to `SNAP_DIR/<point>` and
training goes on, uninterrupted (its log is the reference). A copy taken while this
process waits at a point holds what a kill -9 at that point leaves on disk: every
write() this process made is in the page cache, which outlives the process; what it
has not written yet is in neither. MODE `kill:<point>`: the process ends with
`os._exit(137)` at that point (no handler, no `finally`, no flush: as kill -9).

Points (`STEP`: the checkpoint whose save is cut; the run's first start for the first
two). Where TF does two things in one C++ op (SaveV2 writes the data file then the
index; MergeV2Checkpoints moves the data file then writes the merged index), the state
between them is made from the state before the op (`fixup`), named "(emulated)":

- config_tmp: first start, `config.yaml.tmp` half written, no `config.yaml` (emulated)
- manifest_tmp: first start, `variables.json` temporary file half written (emulated)
- temp_data_partial: SaveV2 half way through the data file, no index (emulated)
- temp_written: SaveV2 done (data and index in `ckpt-N_temp/`), merge not started
- data_moved_no_index: merge moved the data file, merged index not written (emulated)
- merged_index_partial: merged index half written (emulated)
- merged: `ckpt-N.index` and data in place, the `checkpoint` state file not updated
- state_tmp_partial: the state file's temporary file half written, not renamed (emulated)
- state_updated: the state file lists ckpt-N, the oldest checkpoint not deleted yet
- mid_sweep: the oldest checkpoint's index deleted, its data file not yet
- best_merged: `best/best-N` in place, `best/checkpoint` not written (first best save)
"""

from __future__ import annotations

import glob
import os
import shutil
import sys


def main(argv: list[str]) -> int:
    mode, run_dir, snap_dir, step = argv[:4]
    train_args = argv[argv.index("--") + 1 :]
    target = f"ckpt-{step}"
    best_target = f"best-{step}"

    import tensorflow as tf  # noqa: F401 - before the patched modules
    from tensorflow.python.checkpoint import checkpoint_management
    from tensorflow.python.ops import gen_io_ops

    from kerastx import cli
    from kerastx.config import rundir
    from kerastx.train import checkpoints

    def at(point: str, fixup=None) -> None:
        if mode == "snapshot":
            copy = os.path.join(snap_dir, point)
            shutil.copytree(run_dir, copy)
            if fixup is not None:
                fixup(copy)
        elif mode == f"kill:{point}":
            if fixup is not None:
                fixup(run_dir)
            os._exit(137)

    def half(path: str, text: bytes) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(text[: len(text) // 2])

    real_resolved_yaml = rundir.resolved_yaml

    def resolved_yaml(cfg):
        text = real_resolved_yaml(cfg)
        if not os.path.exists(os.path.join(run_dir, rundir.CONFIG_FILE)):
            at(
                "config_tmp",
                lambda d: half(os.path.join(d, rundir.CONFIG_FILE + ".tmp"), text.encode()),
            )
        return text

    rundir.resolved_yaml = resolved_yaml

    real_write_manifest = checkpoints._write_manifest

    def write_manifest(directory, manifest):
        import json

        text = json.dumps({"variables": manifest}).encode()
        at(
            "manifest_tmp",
            lambda d: half(os.path.join(d, "checkpoints", "variables.json.abc123.tmp"), text),
        )
        return real_write_manifest(directory, manifest)

    checkpoints._write_manifest = write_manifest

    real_merge = gen_io_ops.merge_v2_checkpoints

    def relative(path: str) -> str:
        return os.path.relpath(path, run_dir)

    def merge(checkpoint_prefixes, destination_prefix, *args, **kwargs):
        dest = destination_prefix
        if hasattr(dest, "numpy"):
            dest = dest.numpy()
        dest = dest.decode() if isinstance(dest, bytes) else str(dest)
        name = os.path.basename(dest)
        rel = relative(dest)
        if name == target:
            temp = glob.glob(dest + "_temp/part-*.data-*")
            assert len(temp) == 1, temp

            def data_partial(d):
                data = os.path.join(d, relative(temp[0]))
                with open(data, "r+b") as f:
                    f.truncate(os.path.getsize(data) // 2)
                os.remove(glob.glob(os.path.join(d, rel + "_temp", "part-*.index"))[0])

            def data_moved(d):
                shutil.move(
                    os.path.join(d, relative(temp[0])),
                    os.path.join(d, rel + ".data-00000-of-00001"),
                )

            at("temp_data_partial", data_partial)
            at("temp_written")
            at("data_moved_no_index", data_moved)
        result = real_merge(checkpoint_prefixes, destination_prefix, *args, **kwargs)
        if name == target:

            def index_partial(d):
                index = os.path.join(d, rel + ".index")
                with open(index, "r+b") as f:
                    f.truncate(os.path.getsize(index) // 2)

            at("merged_index_partial", index_partial)
            at("merged")
        if name == best_target:
            at("best_merged")
        return result

    gen_io_ops.merge_v2_checkpoints = merge

    real_update = checkpoint_management.update_checkpoint_state_internal
    seen = set()

    def update(save_dir, model_checkpoint_path, *args, **kwargs):
        first = os.path.basename(model_checkpoint_path) == target and target not in seen
        if first:
            seen.add(target)
            state = os.path.join(relative(save_dir), "checkpoint")

            def state_partial(d):
                with open(os.path.join(d, state), "rb") as f:
                    old = f.read()
                half(os.path.join(d, state + ".tmp0123456789abcdef"), old * 2)

            at("state_tmp_partial", state_partial)
        result = real_update(save_dir, model_checkpoint_path, *args, **kwargs)
        if first:
            at("state_updated")
        return result

    checkpoint_management.update_checkpoint_state_internal = update

    real_delete = checkpoint_management._delete_file_if_exists
    deletes = []

    def delete(filespec):
        result = real_delete(filespec)
        if target in seen:
            deletes.append(filespec)
            if len(deletes) == 1:
                at("mid_sweep")
        return result

    checkpoint_management._delete_file_if_exists = delete
    return cli.main(["train", *train_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
