"""langid.py (Lui & Baldwin 2012, the pip `langid` package) on a language-id run's test strings.

The anchor of experiments/langid_gettext.yaml: the same test split (the gettext recipe's
`strings` records), langid.py restricted to the run's languages (`langid.set_languages`;
`zh_CN` is langid's `zh`, `pt_BR` its `pt`), accuracy and macro-F1 computed by the same
functions as kerastx's evaluation, next to the run's `eval_test.json`:

    .venv/bin/python scripts/compare_langid.py runs/langid_gettext
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time


def langid_code(language: str) -> str:
    """The langid.py code of a catalogue language directory (fr, zh_CN -> zh, pt_BR -> pt)."""
    return language.split("_")[0].split("@")[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)
    import langid
    import yaml

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from kerastx import metrics
    from kerastx.data import recipe_gettext

    with open(os.path.join(args.run, "config.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    corpus = cfg["data"][args.split]
    paths = recipe_gettext.prepare_gettext(
        cfg["data"]["data_dir"], corpus["languages"], corpus["locale_dir"], corpus["records"]
    )
    with open(paths[corpus["split"]], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    codes = {langid_code(lang): lang for lang in corpus["languages"]}
    if len(codes) != len(corpus["languages"]):
        raise SystemExit(f"two languages share a langid.py code: {corpus['languages']}")
    langid.set_languages(sorted(codes))
    start = time.time()
    hyps = [codes[langid.classify(text)[0]] for text, _ in rows]
    seconds = time.time() - start
    refs = [[label] for _, label in rows]
    out = {**metrics.accuracy(hyps, refs), **metrics.macro_f1(hyps, refs)}
    out.update({"strings": len(rows), "seconds": seconds, "languages": sorted(codes)})
    with open(os.path.join(args.run, f"langid_py_{args.split}.json"), "w") as f:
        json.dump(out, f, indent=2)
    ours = os.path.join(args.run, f"eval_{args.split}.json")
    line = f"langid.py: accuracy {out['accuracy']:.2f}% macro-F1 {out['macro_f1']:.2f}%"
    if os.path.exists(ours):
        with open(ours, encoding="utf-8") as f:
            k = json.load(f)
        line += f"   kerastx: accuracy {k['accuracy']:.2f}% macro-F1 {k['macro_f1']:.2f}%"
    print(f"{len(rows)} {args.split} strings, {seconds:.1f} s; {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
