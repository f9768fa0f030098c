"""Small TensorFlow helpers shared by the graph-code modules."""

from __future__ import annotations


def expected_retracing(function):
    """Marks a `tf.function` whose retracing is expected and bounded; returns it.

    TensorFlow warns ("N out of the last M calls ... triggered tf.function retracing")
    when a function's traces come in quick succession. Some of ours trace once per
    bucketed batch shape (a bounded set) or once per tokenizer instance, which is by
    design: this turns TensorFlow's own per-function switch for that warning on, so real
    retracing problems elsewhere still show.

    The switch is private (`tf.function` has no public one; TensorFlow sets it itself on
    functions restored from a SavedModel). `reduce_retracing=True` does not serve: it
    relaxes shapes, so it neither stops the traces a new Python object causes nor keeps
    one graph per bucket shape; filtering the `tensorflow` logger would match the
    message's wording, no more public than the switch, for the whole process.
    `tests/test_private_apis.py` pins the switch to the TensorFlow minor release
    `setup.cfg` allows.
    """
    function._omit_frequent_tracing_warning = True  # TF's switch, read on every call
    return function
