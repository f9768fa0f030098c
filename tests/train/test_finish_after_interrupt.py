"""The steps after training (averaging, test evaluation, export) are never skipped.

A run interrupted after its last training step but before those steps finished (Ctrl-C,
SIGTERM or a kill during the test evaluation or the export) is "complete" for the
trainer; `workflow.train` runs the unfinished steps on the next call (`finished.json`
records the step they last finished at), and a finished run stays a no-op.
"""

import os

import pytest

from kerastx import workflow
from tests.train import util


def _cfg(run_dir):
    return util.make_cfg(
        run_dir,
        "training.train_steps=4",
        "training.checkpoint_every=2",
        "training.average_last=2",
        "data.test.num_examples=8",
        "data.test.type=synthetic",
        "data.test.task=copy",
        "export.enabled=false",
    )


def test_an_interrupted_test_evaluation_runs_on_the_next_call(tmp_path, monkeypatch, caplog):
    run_dir = str(tmp_path / "run")
    real_evaluate = workflow.evaluate
    calls = []

    def interrupted(run, *args, **kwargs):
        calls.append(run)
        raise KeyboardInterrupt  # Ctrl-C while the test split is decoded

    monkeypatch.setattr(workflow, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        workflow.train(_cfg(run_dir))
    assert calls == [run_dir]
    assert not os.path.exists(os.path.join(run_dir, workflow.FINISHED_FILE))

    monkeypatch.setattr(workflow, "evaluate", real_evaluate)
    with caplog.at_level("INFO", logger="kerastx"):
        result = workflow.train(_cfg(run_dir))
    assert result["complete"].startswith("run is complete: step 4")
    assert "test" in result and "averaged" in result
    assert (
        f"{run_dir}: training is complete, but averaging / the test evaluation / the export "
        f"did not finish; running them now" in caplog.messages
    )
    assert os.path.exists(os.path.join(run_dir, "eval_test.json"))

    # Finished: the next call does nothing at all.
    before = sorted(os.listdir(run_dir))
    caplog.clear()
    with caplog.at_level("INFO", logger="kerastx"):
        result = workflow.train(_cfg(run_dir))
    assert "test" not in result and "averaged" not in result
    assert not any("running them now" in m for m in caplog.messages)
    assert sorted(os.listdir(run_dir)) == before
