"""Task metrics computed from decoded text, each the standard way.

- WER / PER for G2P (the CMUdict convention): a word is correct if the hypothesis equals any
  of its references; PER is the phoneme edit distance to the closest reference divided by
  that reference's length, summed over words and divided by the summed reference lengths.
- BLEU and chrF with sacrebleu on detokenized text (the signature is returned so it can
  be logged next to the score).
- Accuracy for classifiers and exact-match tasks.
All values are percentages except where said.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (insert, delete, substitute cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def wer_per(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Word and phoneme error rates with several references per word.

    Args:
        hypotheses: list of str. One space-separated phoneme string per word.
        references: list of list of str. All accepted pronunciations of each word.

    Returns:
        dict with `wer` (% of words whose output matches no reference) and `per` (phoneme
        edits to the closest reference / summed lengths of those references, %), and the
        counts `words`, `word_errors`, `phoneme_edits`, `phonemes`.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    word_errors = edits = length = 0
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError(f"no reference for hypothesis {hyp!r}")
        hyp_tokens = hyp.split()
        ref_tokens = [r.split() for r in refs]
        if hyp_tokens not in ref_tokens:
            word_errors += 1
        best = min(ref_tokens, key=lambda r: (edit_distance(hyp_tokens, r), len(r)))
        edits += edit_distance(hyp_tokens, best)
        length += len(best)
    words = len(hypotheses)
    return {
        "wer": 100.0 * word_errors / max(words, 1),
        "per": 100.0 * edits / max(length, 1),
        "words": words,
        "word_errors": word_errors,
        "phoneme_edits": edits,
        "phonemes": length,
    }


def accuracy(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Share of outputs equal to one of their references (%)."""
    correct = sum(h in refs for h, refs in zip(hypotheses, references))
    return {"accuracy": 100.0 * correct / max(len(hypotheses), 1), "correct": correct}


def bleu_chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults) on detokenized text, with signatures.

    Several references per example are allowed; examples with fewer get the first
    reference repeated (sacrebleu needs a full reference stream per position).
    """
    import sacrebleu

    depth = max(len(r) for r in references) if references else 1
    streams = [[refs[min(i, len(refs) - 1)] for refs in references] for i in range(depth)]
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), streams)
    chrf_score = chrf.corpus_score(list(hypotheses), streams)
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


# Placeholders of UI strings that a translation must carry over unchanged: printf
# conversions (`%s`, `%d`, `%5.2f`, `%ld`, positional `%1$s`, Python's `%(name)s`),
# brace fields (`{}`, `{0}`, `{name}`, `{count:d}`), shell/template variables (`${var}`,
# `$var`), markup tags (`<b>`, `</a>`, `<br/>`) and character entities (`&amp;`). A
# translation may reorder them; the metric compares them as multisets. Written here
# because no library extracts placeholders across these syntaxes (sacrebleu and
# translate-toolkit's checks each cover one).
_PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?(?:\([^)]*\))?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"
    r"(?:hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGcrsaApSC%]"
    r"|\{[A-Za-z0-9_.\[\]]*(?:![rsa])?(?::[^{}]*)?\}"
    r"|\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Za-z_][A-Za-z0-9_]*"
    r"|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>"
    r"|&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);"
)


def placeholders_of(text: str) -> list[str]:
    """The placeholders of a UI string, in order (`%%` is a literal percent, left out)."""
    return [m for m in _PLACEHOLDER.findall(text) if m != "%%"]


def placeholders(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Share of outputs whose placeholders equal their first reference's (as multisets), %.

    Also `placeholders_in_refs`: the share among outputs whose reference holds at least
    one placeholder (the harder cases), and `placeholder_examples`: their number.
    """
    from collections import Counter

    equal = equal_with = with_any = 0
    for hyp, refs in zip(hypotheses, references):
        ref = Counter(placeholders_of(refs[0]))
        same = Counter(placeholders_of(hyp)) == ref
        equal += same
        if ref:
            with_any += 1
            equal_with += same
    return {
        "placeholders": 100.0 * equal / max(len(hypotheses), 1),
        "placeholders_in_refs": 100.0 * equal_with / max(with_any, 1),
        "placeholder_examples": with_any,
    }


def macro_f1(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Macro-averaged F1 over the classes of the references (first reference), %.

    Every class seen in the references counts once; a class never predicted has F1 0.
    `per_class_f1` holds each class's F1 (%).
    """
    classes = sorted({refs[0] for refs in references})
    per_class = {}
    for name in classes:
        tp = sum(h == name and refs[0] == name for h, refs in zip(hypotheses, references))
        fp = sum(h == name and refs[0] != name for h, refs in zip(hypotheses, references))
        fn = sum(h != name and refs[0] == name for h, refs in zip(hypotheses, references))
        per_class[name] = 100.0 * 2 * tp / max(2 * tp + fp + fn, 1)
    return {
        "macro_f1": sum(per_class.values()) / max(len(per_class), 1),
        "per_class_f1": per_class,
    }


@dataclasses.dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    Attributes:
        name: str. The key in evaluation results (`evaluation.metrics`, `best_metric`).
        higher_is_better: bool. The direction "best checkpoint" and early stopping use.
        compute: callable `(hypotheses, references) -> dict` that returns this metric
            (and maybe others: `wer_per` gives both), or None for the metrics computed
            from the loss pass (every task with labels: loss, perplexity, token accuracy).
        doc: str. One line for `--explain` and error messages.
    """

    name: str
    higher_is_better: bool
    compute: Callable | None
    doc: str


# The registry of metrics: a new metric is one entry here (and its task lists its name).
METRICS = {
    m.name: m
    for m in (
        Metric("loss", False, None, "token cross-entropy (nats), no label smoothing"),
        Metric("perplexity", False, None, "exp(loss)"),
        Metric("token_accuracy", True, None, "share of target tokens predicted right"),
        Metric("wer", False, wer_per, "word error rate, % (G2P; any reference counts)"),
        Metric("per", False, wer_per, "phoneme error rate, % (closest reference)"),
        Metric("bleu", True, bleu_chrf, "corpus BLEU (sacrebleu, detokenized)"),
        Metric("chrf", True, bleu_chrf, "corpus chrF (sacrebleu)"),
        Metric("accuracy", True, accuracy, "share of outputs equal to a reference, %"),
        Metric(
            "placeholders",
            True,
            placeholders,
            "share of outputs whose placeholders (%s, {name}, <b>) equal the reference's, %",
        ),
        Metric("macro_f1", True, macro_f1, "macro-averaged F1 over the reference classes, %"),
        Metric(
            "bits_per_byte",
            False,
            None,
            "language models: NLL in bits of the text's tokens and each example's EOS, "
            "over the text's UTF-8 bytes (loss pass; anchors: compression_bits_per_byte)",
        ),
    )
}
# Loss-pass metrics that only a family whose labels are text tokens reports (it lists
# them in its `metric_names`); the other loss-pass metrics come with every task.
TEXT_LOSS_METRICS = ("bits_per_byte",)
LOSS_METRICS = tuple(
    name for name, m in METRICS.items() if m.compute is None and name not in TEXT_LOSS_METRICS
)


def compression_bits_per_byte(data: bytes) -> dict:
    """The compressor anchors of a language model's bits per byte, on the same bytes.

    `8 * len(compressed) / len(data)`, container headers included, with Python's
    `lzma.compress(data, preset=9)` (what `xz -9` writes: the .xz format, CRC64 check,
    not the `-9e` extreme preset) and `gzip.compress(data, compresslevel=9, mtime=0)`
    (`gzip -9 -n`, no file name or time in the header). A model's figure is measured on
    examples read one by one, the compressors on the concatenation (they see context
    across example boundaries); both divide by the same byte count.

    Returns:
        dict: `anchor_xz_bits_per_byte`, `anchor_gzip_bits_per_byte` (float) and
        `anchor_bytes` (int); empty for empty `data`.
    """
    import gzip
    import lzma

    if not data:
        return {}
    return {
        "anchor_xz_bits_per_byte": 8.0 * len(lzma.compress(data, preset=9)) / len(data),
        "anchor_gzip_bits_per_byte": 8.0
        * len(gzip.compress(data, compresslevel=9, mtime=0))
        / len(data),
        "anchor_bytes": len(data),
    }


def signed(name: str, value: float) -> float:
    """`value` oriented so that lower is better (what the trainer stores and compares)."""
    return -value if METRICS[name].higher_is_better else value


def task_metrics(
    names: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict:
    """Computes the named decoded-text metrics in one dict (each function once)."""
    out: dict = {}
    done: set = set()
    for name in names:
        compute = METRICS[name].compute
        if compute is not None and compute not in done:
            done.add(compute)
            out.update(compute(hypotheses, references))
    return out
