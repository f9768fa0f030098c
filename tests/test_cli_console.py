"""The console of a real `kerastx` process: no TensorFlow C++ start-up lines (absl's
notice, oneDNN, CUDA probing such as `failed call to cuInit`) unless `-v` asks for them;
kerastx's own lines still come through."""

import os
import re
import subprocess
import sys

import pytest

from tests import trained_runs

# Lines TensorFlow's native code prints: absl's pre-initialization notice and log lines
# such as "I0000 00:00:1796.. 123 port.cc:153] oneDNN custom operations are on ...".
NATIVE = re.compile(
    r"(All log messages before absl::InitializeLog|^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|cuInit|oneDNN|cuda|TF_CPP)"
)


@pytest.fixture(scope="module")
def copy_run(tmp_path_factory):
    return trained_runs.copy_run(tmp_path_factory.getbasetemp())


def _predict(run_dir, source, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-m", "kerastx", "predict", run_dir, "-i", source, *flags],
        cwd=trained_runs.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr.splitlines()


def test_no_native_start_up_lines_unless_verbose(copy_run, tmp_path):
    source = tmp_path / "in.txt"
    long = " ".join(trained_runs.LETTERS[i % 20] for i in range(40))
    source.write_text(f"a b c\n{long}\n", encoding="utf-8")
    out, err = _predict(copy_run, str(source))
    assert len(out) == 2
    assert [line for line in err if NATIVE.search(line)] == []
    # kerastx's own lines are kept: the checkpoint it loaded, the warning.
    assert err[-1] == (
        "kerastx predict: warning: 1 of 2 inputs were longer than data.max_source_length=32 "
        "tokens and were cut to it (line 2)"
    )
    verbose_out, verbose_err = _predict(copy_run, str(source), "-v")
    assert verbose_out == out
    assert any(NATIVE.search(line) for line in verbose_err)  # absl's notice at least
    assert err[-1] in verbose_err
