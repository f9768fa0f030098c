"""Task metrics: exact values on hand-checked cases."""

import pytest

from kerastx import metrics, tasks


def test_edit_distance():
    assert metrics.edit_distance("kitten", "sitting") == 3
    assert metrics.edit_distance([], ["A", "B"]) == 2
    assert metrics.edit_distance(["HH", "AH"], ["HH", "AH"]) == 0


def test_wer_per_counts_a_word_correct_if_any_reference_matches():
    hyps = ["T AH M EY T OW", "K AE T", "D AO G"]
    refs = [["T AH M EY T OW", "T AH M AA T OW"], ["K AE T S"], ["D AO G", "D AA G"]]
    out = metrics.wer_per(hyps, refs)
    assert out["words"] == 3 and out["word_errors"] == 1
    assert out["wer"] == pytest.approx(100 / 3)
    # Edits: 0 (tomato) + 1 (cat vs cats, 4 phonemes) + 0 (dog, 3 phonemes).
    assert out["phoneme_edits"] == 1 and out["phonemes"] == 6 + 4 + 3
    assert out["per"] == pytest.approx(100 / 13)


def test_a_word_matching_a_later_reference_is_correct():
    # Each hypothesis equals a reference other than the first: no word error, no edit.
    hyps = ["T AH M AA T OW", "D AA G", "R IY D"]
    refs = [["T AH M EY T OW", "T AH M AA T OW"], ["D AO G", "D AA G"], ["R EH D", "X", "R IY D"]]
    out = metrics.wer_per(hyps, refs)
    assert (out["words"], out["word_errors"], out["wer"]) == (3, 0, 0.0)
    assert (out["phoneme_edits"], out["phonemes"], out["per"]) == (0, 6 + 3 + 3, 0.0)
    assert metrics.accuracy(hyps, refs)["accuracy"] == 100.0


def test_per_uses_the_closest_reference():
    out = metrics.wer_per(["A B C"], [["X Y Z W V", "A B D"]])
    assert (out["phoneme_edits"], out["phonemes"]) == (1, 3)


def test_accuracy_and_bleu():
    assert metrics.accuracy(["a", "b"], [["a"], ["c", "d"]])["accuracy"] == 50.0
    out = metrics.bleu_chrf(["the cat sat on the mat"], [["the cat sat on the mat"]])
    assert out["bleu"] == pytest.approx(100.0) and out["chrf"] == pytest.approx(100.0)
    assert out["bleu_signature"].startswith("nrefs:1|")


def test_task_metrics_and_defaults():
    out = metrics.task_metrics(["wer", "accuracy"], ["A"], [["A"]])
    assert out["wer"] == 0.0 and out["accuracy"] == 100.0 and "bleu" not in out
    assert tasks.get("seq2seq").default_metrics("cmudict") == ("wer", "per")
    assert tasks.get("encoder_classifier").default_metrics("tsv") == ("accuracy", "macro_f1")
    assert tasks.get("seq2seq").default_metrics("gettext") == ("bleu", "chrf", "placeholders")


def test_every_metric_has_one_direction_and_every_task_metric_is_registered():
    assert metrics.METRICS["bleu"].higher_is_better and not metrics.METRICS["wer"].higher_is_better
    assert metrics.signed("accuracy", 90.0) < metrics.signed("accuracy", 80.0)
    assert metrics.signed("loss", 1.0) < metrics.signed("loss", 2.0)
    for name in tasks.names():
        assert set(tasks.get(name).decoded_metrics) <= set(metrics.METRICS), name
    assert metrics.LOSS_METRICS == ("loss", "perplexity", "token_accuracy")


def test_placeholders_of_each_syntax():
    text = "Copy %s to %2$d: {name} {} {0:>4} <b>x</b> &amp; 100%% ${HOME} %(n)d, %-5.2f %ld"
    assert metrics.placeholders_of(text) == [
        "%s", "%2$d", "{name}", "{}", "{0:>4}", "<b>", "</b>", "&amp;", "${HOME}", "%(n)d",
        "%-5.2f", "%ld",
    ]  # fmt: skip
    assert metrics.placeholders_of("no placeholder here, 50%% off") == []


def test_placeholders_compare_as_multisets():
    hyps = ["%d fichiers dans %s", "Ouvrir %s", "Bonjour", "Fermer {n} <b>"]
    refs = [["%d files in %s"], ["Open %d"], ["Hello"], ["Close <b> {n}"]]
    out = metrics.placeholders(hyps, refs)
    # 1: same multiset (reordered is fine); 2: %s vs %d; 3: none on both sides; 4: reordered.
    assert out["placeholders"] == 75.0
    assert out["placeholder_examples"] == 3
    assert out["placeholders_in_refs"] == 100.0 * 2 / 3


def test_macro_f1_by_hand():
    hyps = ["fr", "fr", "de", "en", "en", "en"]
    refs = [["fr"], ["de"], ["de"], ["en"], ["en"], ["fr"]]
    out = metrics.macro_f1(hyps, refs)
    # fr: tp 1 fp 1 fn 1 -> 0.5; de: tp 1 fp 0 fn 1 -> 2/3; en: tp 2 fp 1 fn 0 -> 0.8
    assert out["per_class_f1"] == pytest.approx({"fr": 50.0, "de": 200 / 3, "en": 80.0})
    assert out["macro_f1"] == pytest.approx((50.0 + 200 / 3 + 80.0) / 3)
