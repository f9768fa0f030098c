"""The gettext recipe: catalogues -> deduplicated, hash-split TSV files; through the CLI."""

from __future__ import annotations

import csv
import glob
import json
import os

import pytest
import yaml

from kerastx import cli, metrics
from kerastx.data import recipe_gettext
from kerastx.data.errors import DataError

FR_A = {
    "Open %s": "Ouvrir %s",
    "Save": "Enregistrer",
    "Quit": "Quitter",
    "OK": "OK",
    "Copied {count} files": "{count} fichiers copiés",
    "Line one\nline two": "Ligne un\nligne deux",  # multi-line: left out
    "Untranslated": "",
    "menu\x04File": "Fichier",  # with a context: the text is "File"
}
FR_B = {"Save": "Sauvegarder", "Open %s": "Ouvrir %s", "Help": "Aide"}
FR_C = {"Save": "Enregistrer"}
DE = {"Open %s": "%s öffnen", "Save": "Speichern", "OK": "OK", "Help": "Hilfe"}


def _locale(tmp_path, extra=None):
    root = tmp_path / "locale"
    catalogues = {
        ("fr", "a"): FR_A,
        ("fr", "b"): FR_B,
        ("fr", "c"): FR_C,
        ("de", "a"): DE,
        **(extra or {}),
    }
    for (lang, name), messages in catalogues.items():
        os.makedirs(root / lang / "LC_MESSAGES", exist_ok=True)
        recipe_gettext.write_mo(str(root / lang / "LC_MESSAGES" / f"{name}.mo"), messages)
    return str(root)


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _manifest(paths):
    return _json(os.path.join(os.path.dirname(paths["train"]), "manifest.json"))


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _all_rows(paths):
    header = _rows(paths["train"])[0]
    return header, {s: _rows(p)[1:] for s, p in paths.items()}


def test_pairs_are_deduplicated_split_by_message_and_counted(tmp_path):
    locale = _locale(tmp_path)
    paths = recipe_gettext.prepare_gettext(str(tmp_path / "data"), ["fr"], locale)
    header, rows = _all_rows(paths)
    assert header == ["source", "target", "language", "language_vector", "catalogue"]
    every = {r[0]: (r[1], s) for s, split_rows in rows.items() for r in split_rows}
    # "Save": Enregistrer in a and c, Sauvegarder in b -> the most frequent one.
    assert every["Save"][0] == "Enregistrer"
    assert every["File"][0] == "Fichier"
    assert every["Copied {count} files"][0] == "{count} fichiers copiés"
    assert set(every) == {"Open %s", "Save", "Quit", "OK", "Copied {count} files", "File", "Help"}
    for message, (_, split) in every.items():
        assert split == recipe_gettext.split_of(message)
    manifest = _manifest(paths)
    assert manifest["left_out"]["multi_line_or_tab"] == 1
    assert manifest["left_out"]["untranslated"] == 1
    # Save: 2 distinct translations (1 conflicting); Open %s twice the same (0).
    assert manifest["left_out"]["conflicting_translations"] == 1
    assert sum(c["rows"] for c in manifest["counts"].values()) == 7
    assert manifest["catalogues_read"] == {"fr": 3}


def test_multilingual_pairs_carry_the_language(tmp_path):
    locale = _locale(tmp_path)
    paths = recipe_gettext.prepare_gettext(str(tmp_path / "data"), ["fr", "de"], locale)
    _, rows = _all_rows(paths)
    pairs = {(r[0], r[2]): r[1] for split_rows in rows.values() for r in split_rows}
    assert pairs[("Open %s", "de")] == "%s öffnen"
    assert pairs[("Open %s", "fr")] == "Ouvrir %s"
    vectors = {r[2]: r[3] for split_rows in rows.values() for r in split_rows}
    assert vectors == {"de": "1 0", "fr": "0 1"}  # one-hot over the sorted languages
    assert len(pairs) == 7 + 4
    # One message's translations all fall in one split.
    split_of = {}
    for split, split_rows in rows.items():
        for r in split_rows:
            assert split_of.setdefault(r[0], split) == split


def test_strings_for_language_id_leave_out_ambiguous_texts(tmp_path):
    locale = _locale(tmp_path)
    paths = recipe_gettext.prepare_gettext(
        str(tmp_path / "data"), ["en", "fr", "de"], locale, records="strings"
    )
    header, rows = _all_rows(paths)
    assert header == ["source", "label"]
    labels = {r[0]: r[1] for split_rows in rows.values() for r in split_rows}
    assert labels["Quitter"] == "fr" and labels["Hilfe"] == "de" and labels["Quit"] == "en"
    assert "OK" not in labels  # en, fr and de all write "OK"
    manifest = _manifest(paths)
    assert manifest["left_out"]["ambiguous_strings"] >= 1


def test_unreadable_catalogue_is_listed_and_changed_catalogues_are_refused(tmp_path):
    locale = _locale(tmp_path)
    bad = os.path.join(locale, "fr", "LC_MESSAGES", "z.mo")
    with open(bad, "wb") as f:
        f.write(b"not a catalogue at all")
    data = str(tmp_path / "data")
    paths = recipe_gettext.prepare_gettext(data, ["fr"], locale)
    manifest = _manifest(paths)
    assert [s["path"] for s in manifest["left_out"]["catalogues_unreadable"]] == [bad]
    assert recipe_gettext.prepare_gettext(data, ["fr"], locale) == paths  # unchanged: reused
    manifest_path = os.path.join(os.path.dirname(paths["train"]), "manifest.json")
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump({**manifest, "version": 1}, f)
    with pytest.raises(DataError, match=r"another version of the gettext recipe.*delete"):
        recipe_gettext.prepare_gettext(data, ["fr"], locale)
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    recipe_gettext.write_mo(os.path.join(locale, "fr", "LC_MESSAGES", "new.mo"), {"Yes": "Oui"})
    with pytest.raises(DataError, match=r"built from other gettext catalogues.*delete"):
        recipe_gettext.prepare_gettext(data, ["fr"], locale)


def test_bad_languages_are_one_line_errors(tmp_path):
    locale = _locale(tmp_path)
    with pytest.raises(
        DataError, match=r"no catalogues for language 'xx'.*installed languages: de, fr"
    ):
        recipe_gettext.prepare_gettext(str(tmp_path / "d"), ["xx"], locale)
    with pytest.raises(DataError, match=r"'en' is the source side"):
        recipe_gettext.prepare_gettext(str(tmp_path / "d"), ["en", "fr"], locale)


def test_the_machine_catalogues_give_thousands_of_french_pairs(tmp_path):
    if not glob.glob("/usr/share/locale/fr/LC_MESSAGES/*.mo"):
        pytest.skip("no French gettext catalogues on this machine")
    paths = recipe_gettext.prepare_gettext(str(tmp_path), ["fr"])
    _, rows = _all_rows(paths)
    assert len(rows["train"]) > 1000 and len(rows["test"]) > 50
    # Every row's split is its message's, and the placeholders are mostly carried over
    # by the human translators (what the recipe's metric expects of the model).
    same = [
        metrics.placeholders_of(r[0]) == metrics.placeholders_of(r[1])
        or sorted(metrics.placeholders_of(r[0])) == sorted(metrics.placeholders_of(r[1]))
        for r in rows["test"]
    ]
    assert sum(same) / len(same) > 0.9
    for split, split_rows in rows.items():
        assert all(recipe_gettext.split_of(r[0]) == split for r in split_rows)


def _messages(count):
    verbs = ["Open", "Close", "Save", "Delete", "Copy", "Move", "Print", "Rename"]
    objects = ["file", "folder", "window", "page", "image", "list", "note", "tab"]
    fr_verbs = ["Ouvrir", "Fermer", "Enregistrer", "Supprimer", "Copier", "Déplacer"]
    fr_verbs += ["Imprimer", "Renommer"]
    fr_objects = ["fichier", "dossier", "fenêtre", "page", "image", "liste", "note", "onglet"]
    out = {}
    for i in range(count):
        v, o = i % len(verbs), (i // len(verbs)) % len(objects)
        out[f"{verbs[v]} {objects[o]} %s"] = f"{fr_verbs[v]} {fr_objects[o]} %s"
    return out


def test_translation_and_language_id_train_and_evaluate_through_the_cli(tmp_path):
    root = tmp_path / "locale"
    os.makedirs(root / "fr" / "LC_MESSAGES")
    recipe_gettext.write_mo(str(root / "fr" / "LC_MESSAGES" / "app.mo"), _messages(64))
    common = {
        "source_tokenizer": {"type": "chars"},
        "target_tokenizer": {"type": "chars"},
        "data_dir": str(tmp_path / "data"),
        "max_source_length": 40,
        "max_target_length": 40,
        "batch_size": 512,
    }
    corpus = {"type": "gettext", "locale_dir": str(root), "languages": ["fr"]}
    doc = {
        "run_dir": str(tmp_path / "mt"),
        "data": {
            **common,
            "train": [{**corpus, "split": "train"}],
            "dev": {**corpus, "split": "train"},  # the tiny catalogue: evaluate what it saw
        },
        "model": {
            "type": "seq2seq",
            "d_model": 32,
            "num_heads": 2,
            "ffn_dim": 64,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "max_length": 48,
        },
        "training": {"train_steps": 20, "checkpoint_every": 20, "warmup_steps": 5},
        "evaluation": {"every": 0},
        "export": {"enabled": False},
    }
    path = tmp_path / "mt.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["train", str(path)]) == 0
    assert cli.main(["evaluate", doc["run_dir"], "--split", "dev"]) == 0
    result = _json(os.path.join(doc["run_dir"], "eval_dev.json"))
    for key in ("bleu", "chrf", "placeholders", "placeholders_in_refs"):
        assert 0.0 <= result[key] <= 100.0
    assert result["placeholder_examples"] > 0

    recipe_gettext.write_mo(
        str(root / "fr" / "LC_MESSAGES" / "app.mo"), _messages(64)
    )  # unchanged content: the same catalogue
    strings = {"type": "gettext", "locale_dir": str(root), "languages": ["en", "fr"]}
    strings["records"] = "strings"
    doc = {
        "run_dir": str(tmp_path / "langid"),
        "data": {
            **common,
            "train": [{**strings, "split": "train"}],
            "dev": {**strings, "split": "train"},
        },
        "model": {
            "type": "encoder_classifier",
            "d_model": 32,
            "num_heads": 2,
            "ffn_dim": 64,
            "num_layers": 1,
            "max_length": 48,
        },
        "training": {"train_steps": 20, "checkpoint_every": 20, "warmup_steps": 5},
        "evaluation": {"every": 0},
        "export": {"enabled": False},
    }
    del doc["data"]["target_tokenizer"], doc["data"]["max_target_length"]
    path = tmp_path / "langid.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert cli.main(["train", str(path)]) == 0
    assert cli.main(["evaluate", doc["run_dir"], "--split", "dev"]) == 0
    result = _json(os.path.join(doc["run_dir"], "eval_dev.json"))
    assert set(result["per_class_f1"]) == {"en", "fr"}
    assert 0.0 <= result["macro_f1"] <= 100.0 and 0.0 <= result["accuracy"] <= 100.0

    # The recipe's anchor, langid.py on the same strings (scripts/compare_langid.py).
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_langid", os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                                       "compare_langid.py")
    )  # fmt: skip
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    assert compare.main([doc["run_dir"], "--split", "dev"]) == 0
    anchor = _json(os.path.join(doc["run_dir"], "langid_py_dev.json"))
    rows = _rows(glob.glob(str(tmp_path / "data" / "gettext" / "langid-*" / "train.tsv"))[0])
    assert anchor["languages"] == ["en", "fr"] and anchor["strings"] == len(rows) - 1
    # "Ouvrir fichier %s" and "Open file %s": langid.py tells these apart almost always.
    assert anchor["accuracy"] > 80.0
    assert compare.langid_code("zh_CN") == "zh" and compare.langid_code("pt_BR") == "pt"
