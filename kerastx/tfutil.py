"""Small TensorFlow helpers shared by the graph-code modules."""

from __future__ import annotations


def expected_retracing(function):
    """Marks a `tf.function` whose retracing is expected and bounded; returns it.

    TensorFlow warns ("N out of the last M calls ... triggered tf.function retracing")
    when a function's traces come in quick succession. Some of ours trace once per
    bucketed batch shape (a bounded set) or once per tokenizer instance, which is by
    design: this turns TensorFlow's own per-function switch for that warning on, so real
    retracing problems elsewhere still show.
    """
    function._omit_frequent_tracing_warning = True  # TF's switch, read on every call
    return function
