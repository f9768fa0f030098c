"""Trains OpenNMT-tf 2.32 on the data and pieces of a kerastx translation run, and scores both.

The comparison of experiments/README.md ("Translation from software catalogues"): the same
model size (Transformer, pre-norm, sinusoidal positions, shared embeddings), the same
training pairs, the same SentencePiece model (the kerastx run's `vocab/shared.model`), the
same token batch, learning-rate schedule (linear warmup, inverse square root), label
smoothing, beam and length penalty, and the same number of steps or minutes on this CPU.
OpenNMT-tf needs TensorFlow <= 2.13 and tensorflow-addons, so it runs in its own
virtualenv (never in kerastx's):

    python3 -m venv /work/onmt-venv
    /work/onmt-venv/bin/pip install tensorflow==2.13.1 tensorflow-addons==0.21.0 \\
        opennmt-tf==2.32.0 sentencepiece sacrebleu

    .venv/bin/python scripts/compare_opennmt.py runs/translate_en_fr \\
        --onmt-venv /work/onmt-venv --steps 1500 --out runs/opennmt_en_fr

It writes OpenNMT-tf's data (pieces), vocabulary, model and config under --out, trains,
decodes the test split with the averaged checkpoint, and prints BLEU, chrF and the
placeholder match of both systems (kerastx's from `RUN/eval_test.json`) and OpenNMT-tf's
training tokens/s (source + target words/s of its log, the same count as kerastx's
`train/tokens_per_second`: real tokens, no padding).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time

MODEL_PY = """import opennmt


def model():
    return opennmt.models.Transformer(
        source_inputter=opennmt.inputters.WordEmbedder(embedding_size={d}),
        target_inputter=opennmt.inputters.WordEmbedder(embedding_size={d}),
        num_layers=({enc}, {dec}),
        num_units={d},
        num_heads={heads},
        ffn_inner_dim={ffn},
        dropout={dropout},
        attention_dropout={attention_dropout},
        ffn_dropout=0.0,
        share_embeddings=opennmt.models.EmbeddingsSharingLevel.ALL,
        pre_norm=True,
    )
"""


def _rows(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]


def _write(path: str, lines) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the kerastx run (its config.yaml, vocab/shared.model)")
    p.add_argument("--onmt-venv", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=0, help="0 = the kerastx run's train_steps")
    p.add_argument(
        "--no-clip", action="store_true", help="train OpenNMT-tf without gradient clipping"
    )
    args = p.parse_args(argv)

    import sentencepiece as spm
    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kerastx import metrics

    with open(os.path.join(args.run, "config.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    m, t, d, dec = cfg["model"], cfg["training"], cfg["data"], cfg["decoding"]
    steps = args.steps or t["train_steps"]
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.run, "vocab", "shared.model"))
    os.makedirs(args.out, exist_ok=True)
    from kerastx.data import recipe_gettext

    corpus = d["train"][0]
    paths = recipe_gettext.prepare_gettext(
        d["data_dir"], corpus["languages"], corpus["locale_dir"], corpus["records"]
    )
    files = {}
    for split in ("train", "dev", "test"):
        rows = _rows(paths[split])
        for side, column in (("src", 0), ("tgt", 1)):
            name = os.path.join(args.out, f"{split}.{side}")
            _write(name, (" ".join(sp.encode(r[column], out_type=str)) for r in rows))
            files[(split, side)] = name
        files[(split, "ref")] = [r[1] for r in rows]
        files[(split, "raw")] = [r[0] for r in rows]
    vocab = os.path.join(args.out, "vocab.txt")
    # OpenNMT-tf adds <blank>, <s>, </s> and <unk> itself; the pieces are the SentencePiece
    # model's own (kerastx ids 0-3 are pad/bos/eos/unk, left out here).
    _write(vocab, [sp.id_to_piece(i) for i in range(4, sp.get_piece_size())])
    model_py = os.path.join(args.out, "model.py")
    with open(model_py, "w", encoding="utf-8") as f:
        f.write(
            MODEL_PY.format(
                d=m["d_model"],
                enc=m["num_encoder_layers"],
                dec=m["num_decoder_layers"],
                heads=m["num_heads"],
                ffn=m["ffn_dim"],
                dropout=m["dropout"],
                attention_dropout=m["attention_dropout"],
            )
        )
    model_dir = os.path.join(args.out, "model")
    optimizer_params = {"beta_1": t["beta_1"], "beta_2": t["beta_2"], "epsilon": 1e-9}
    if t.get("clip_norm") and not args.no_clip:
        # kerastx clips the global gradient norm (training.clip_norm, default 1.0); the
        # Keras optimizer's `global_clipnorm` does the same in OpenNMT-tf. Runs before
        # 2026-12-07 left it out (--no-clip reproduces them).
        optimizer_params["global_clipnorm"] = t["clip_norm"]
    config = {
        "model_dir": model_dir,
        "data": {
            "train_features_file": files[("train", "src")],
            "train_labels_file": files[("train", "tgt")],
            "source_vocabulary": vocab,
            "target_vocabulary": vocab,
        },
        "params": {
            "optimizer": "Adam",
            "optimizer_params": optimizer_params,
            "learning_rate": t["learning_rate"],
            "decay_type": "InvSqrtDecay",
            "decay_params": {"warmup_steps": t["warmup_steps"]},
            "label_smoothing": t["label_smoothing"],
            "average_loss_in_time": True,
            "beam_width": dec["beam_size"],
            "length_penalty": dec["length_penalty"],
            "maximum_decoding_length": dec["max_length"],
        },
        "train": {
            "batch_size": d["batch_size"],
            "batch_type": "tokens",
            "effective_batch_size": None,
            "maximum_features_length": d["max_source_length"],
            "maximum_labels_length": d["max_target_length"],
            "max_step": steps,
            "save_checkpoints_steps": t["checkpoint_every"],
            "keep_checkpoint_max": max(t["average_last"], 1) + 1,
            "average_last_checkpoints": t["average_last"],
            "save_summary_steps": t["log_every"],
            "sample_buffer_size": -1,
            "length_bucket_width": 1,
        },
        "infer": {"batch_size": 32, "batch_type": "examples", "length_bucket_width": 5},
    }
    config_path = os.path.join(args.out, "config.yml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f)
    onmt = os.path.join(args.onmt_venv, "bin", "onmt-main")
    base = [onmt, "--model", model_py, "--config", config_path]
    log_path = os.path.join(args.out, "train.log")
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        subprocess.run([*base, "train"], check=True, stdout=log, stderr=subprocess.STDOUT)
    train_seconds = time.time() - start
    with open(log_path, encoding="utf-8") as f:
        text = f.read()
    # "tokens/s = 4277 (1808 source, 2469 target)" (2.32), or older releases' "source
    # words/s = S, target words/s = T".
    rates = [float(r) for r in re.findall(r"tokens/s = (\d+) \(", text)] or [
        float(s) + float(t_)
        for s, t_ in re.findall(r"source words/s = (\d+), target words/s = (\d+)", text)
    ]
    # "Step = 900 ; steps/s = ... ; Learning rate = ... ; Loss = 4.9" (2.32)
    losses = [(int(a), float(b)) for a, b in re.findall(r"Step = (\d+) ;.*?Loss = ([\d.]+)", text)]
    checkpoint = os.path.join(model_dir, "avg") if t["average_last"] > 1 else model_dir
    out_sp = os.path.join(args.out, "test.hyp.sp")
    start = time.time()
    with open(os.path.join(args.out, "infer.log"), "w", encoding="utf-8") as log:
        subprocess.run(
            [*base, "--checkpoint_path", checkpoint, "infer", "--features_file",
             files[("test", "src")], "--predictions_file", out_sp],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )  # fmt: skip
    infer_seconds = time.time() - start
    with open(out_sp, encoding="utf-8") as f:
        hyps = [sp.decode(line.split()) for line in f.read().splitlines()]
    refs = [[r] for r in files[("test", "ref")]]
    onmt_scores = metrics.bleu_chrf(hyps, refs)
    onmt_scores.update(metrics.placeholders(hyps, refs))
    result = {
        "steps": steps,
        "train_minutes": train_seconds / 60,
        "infer_seconds": infer_seconds,
        # The first logged window includes start-up and graph building: left out.
        "tokens_per_second_median": statistics.median(rates[1:] or rates) if rates else None,
        "global_clipnorm": optimizer_params.get("global_clipnorm"),
        "train_loss": losses,  # (step, loss) of each logged window
        "test": {k: v for k, v in onmt_scores.items() if not k.endswith("signature")},
        "bleu_signature": onmt_scores["bleu_signature"],
    }
    _write(os.path.join(args.out, "test.hyp"), hyps)
    with open(os.path.join(args.out, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    ours = os.path.join(args.run, "eval_test.json")
    if os.path.exists(ours):
        with open(ours, encoding="utf-8") as f:
            k = json.load(f)
        print(
            f"kerastx test: BLEU {k.get('bleu', 0):.2f} chrF {k.get('chrf', 0):.2f} "
            f"placeholders {k.get('placeholders_in_refs', 0):.1f}%   OpenNMT-tf: BLEU "
            f"{onmt_scores['bleu']:.2f} chrF {onmt_scores['chrf']:.2f} placeholders "
            f"{onmt_scores['placeholders_in_refs']:.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
