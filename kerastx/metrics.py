"""Task metrics computed from decoded text, each the standard way.

- WER / PER for G2P (BRIEF.md section 3): a word is correct if the hypothesis equals any
  of its references; PER is the phoneme edit distance to the closest reference divided by
  that reference's length, summed over words and divided by the summed reference lengths.
- BLEU and chrF with sacrebleu on detokenized text (the signature is returned so it can
  be logged next to the score).
- Accuracy for classifiers and exact-match tasks.
All values are percentages except where said.
"""

from __future__ import annotations

from collections.abc import Sequence


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


def task_metrics(
    names: Sequence[str], hypotheses: Sequence[str], references: Sequence[Sequence[str]]
) -> dict:
    """Computes the named metrics (wer, per, bleu, chrf, accuracy) in one dict."""
    out: dict = {}
    if {"wer", "per"} & set(names):
        out.update(wer_per(hypotheses, references))
    if {"bleu", "chrf"} & set(names):
        out.update(bleu_chrf(hypotheses, references))
    if "accuracy" in names:
        out.update(accuracy(hypotheses, references))
    return out


def default_metrics(model_type: str, corpus_type: str | None) -> list[str]:
    """The metrics of a task when `evaluation.metrics` is empty."""
    if model_type == "encoder_classifier":
        return ["accuracy"]
    if corpus_type == "cmudict":
        return ["wer", "per"]
    if corpus_type == "synthetic":
        return ["accuracy"]
    if model_type == "decoder_lm":
        return []
    return ["bleu", "chrf"]
