"""Expert load per layer and condition tag of a mixture-of-experts seq2seq run."""

import json
import os

import numpy as np

import kerastx
from kerastx import expert_load, runs, workflow
from kerastx.layers.mixture_of_experts import MixtureOfExperts

WORDS = ["a b c", "b a", "c c a", "a", "b c", "c b a b", "a a c", "b"]


def _run(tmp_path) -> str:
    rows = ["src\ttgt\tcond"]
    for i in range(40):
        src = WORDS[(i // 2) % len(WORDS)]
        cond = "rev" if i % 2 else "cp"
        rows.append(f"{src}\t{' '.join(reversed(src.split())) if i % 2 else src}\t{cond}")
    path = tmp_path / "d.tsv"
    path.write_text("\n".join(rows) + "\n")
    corpus = {
        "type": "tsv",
        "path": str(path),
        "source_column": "src",
        "target_column": "tgt",
        "condition_column": "cond",
    }
    exp = kerastx.Experiment.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {
                "train": [corpus],
                "dev": corpus,
                "source_tokenizer": {"type": "symbols"},
                "target_tokenizer": {"type": "symbols"},
                "max_source_length": 8,
                "max_target_length": 8,
                "batch_size": 128,
            },
            "model": {
                "d_model": 16,
                "num_heads": 2,
                "num_encoder_layers": 2,
                "num_decoder_layers": 2,
                "ffn_dim": 32,
                "dropout": 0.0,
                "max_length": 8,
                "num_conditions": 2,
                "num_experts": 4,
                "moe_every": 1,
            },
            "training": {"train_steps": 3, "checkpoint_every": 3, "log_every": 3},
            "evaluation": {"every": 0, "metrics": ["accuracy"]},
            "export": {"enabled": False},
            "decoding": {"max_length": 8, "batch_size": 8},
        }
    )
    exp.train()
    return str(tmp_path / "run")


def test_expert_load_per_condition_counts_every_real_token(tmp_path):
    run_dir = _run(tmp_path)
    loaded = runs.load_run(run_dir)
    layers = expert_load.moe_layers(loaded.model)
    assert len(layers) == 4  # moe_every: 1 -> every encoder and decoder layer
    originals = [layer.call for layer in layers]
    load = expert_load.expert_load(loaded.task, loaded.model, loaded.data, "dev")
    assert [layer.call for layer in layers] == originals  # the wrappers are removed
    assert set(load["by_condition"]) == {"cp", "rev"}
    # Independent count of the real tokens each layer routes: sources with their EOS
    # (encoder), BOS + target tokens (decoder), top_k assignments each.
    raw_sources = [r.split("\t")[0] for r in (tmp_path / "d.tsv").read_text().splitlines()[1:]]
    raw_targets = [r.split("\t")[1] for r in (tmp_path / "d.tsv").read_text().splitlines()[1:]]
    source_tokens = sum(len(s.split()) + 1 for s in raw_sources)
    target_tokens = sum(len(t.split()) + 1 for t in raw_targets)
    top_k = layers[0].top_k
    for name in load["layers"]:
        row = load["all"][name]
        assert np.isclose(sum(row["share"]), 1.0)
        expected = source_tokens if "encoder" in name else target_tokens
        assert row["assignments"] == top_k * expected, name
        # The tags split the tokens between them: their counts add up to the total.
        by_tag = sum(load["by_condition"][tag][name]["assignments"] for tag in ("cp", "rev"))
        assert by_tag == row["assignments"]
        for tag in ("cp", "rev"):
            assert np.isclose(sum(load["by_condition"][tag][name]["share"]), 1.0)
    assert "| rev |" in expert_load.table(load)
    assert all(isinstance(layer, MixtureOfExperts) for layer in layers)

    results = workflow.evaluate(run_dir, "dev")
    with open(os.path.join(run_dir, "eval_dev.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["expert_load"]["by_condition"].keys() == {"cp", "rev"}
    assert results["expert_load"]["all"] == load["all"]
