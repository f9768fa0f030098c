"""The package's import-time checks."""

import pytest

import kerastx


def test_matching_versions_pass():
    assert kerastx.check_versions("2.21.0", "2.21.1") == ("2.21.0", "2.21.1")


def test_mismatched_tf_and_text_fail_clearly():
    with pytest.raises(kerastx.VersionMismatchError) as info:
        kerastx.check_versions("2.21.0", "2.20.0")
    assert str(info.value).startswith(
        "tensorflow 2.21.0 and tensorflow-text 2.20.0 come from different releases"
    )


def test_unsupported_release_fails_clearly():
    with pytest.raises(kerastx.VersionMismatchError, match="supports tensorflow 2.21.x"):
        kerastx.check_versions("2.22.0", "2.22.0")
