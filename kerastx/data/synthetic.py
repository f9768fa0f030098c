"""Synthetic sequence tasks for tests and smoke runs: copy, reverse, sort, addition.

Every example is a pair of strings of symbols separated by single spaces, meant for the
`symbols` tokenizer (one token a symbol):

- copy: `"b d c a" -> "b d c a"`; reverse: `-> "a c d b"`; sort: `-> "a b c d"`.
  Symbol i is the i-th character of `a-z A-Z 0-9` (`s62`, `s63`, ... beyond 62; sort
  uses this order); lengths are uniform in `[min_length, max_length]`.
- addition: `"4 0 7 + 3 8" -> "4 4 5"`; each operand has a uniform number of digits in
  `[min_length, max_length]` (no leading zeros); `alphabet_size` is not used.

The examples are a pure function of the experiment seed, the split and the corpus
position, so dev and test sets differ from the training set (though, on tiny alphabets,
some strings may occur in several).
"""

from __future__ import annotations

import string

import numpy as np

ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits
_SPLIT_CODES = {"train": 0, "dev": 1, "test": 2}


def symbol(i: int) -> str:
    """The name of symbol i."""
    return ALPHABET[i] if i < len(ALPHABET) else f"s{i}"


def _digits(rng: np.random.Generator, n: int) -> str:
    first = rng.integers(1 if n > 1 else 0, 10)
    rest = rng.integers(0, 10, size=n - 1)
    return str(first) + "".join(str(d) for d in rest)


def generate(
    task: str,
    num_examples: int,
    min_length: int,
    max_length: int,
    alphabet_size: int,
    seed: int,
    split: str = "train",
    position: int = 0,
) -> tuple[list[str], list[str]]:
    """Generates a synthetic task.

    Args:
        task: str. "copy", "reverse", "sort" or "addition".
        num_examples: int. Examples generated.
        min_length: int. Shortest sequence (digits per operand for addition).
        max_length: int. Longest sequence.
        alphabet_size: int. Distinct symbols (copy, reverse, sort).
        seed: int. The experiment seed.
        split: str. "train", "dev" or "test"; each gets different examples.
        position: int. The corpus position in its list (train[i]); changes the examples.

    Returns:
        `(sources, targets)`, two lists of `num_examples` strings.
    """
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], position, 7919])
    sources, targets = [], []
    if task == "addition":
        for _ in range(num_examples):
            a = _digits(rng, int(rng.integers(min_length, max_length + 1)))
            b = _digits(rng, int(rng.integers(min_length, max_length + 1)))
            sources.append(" ".join(f"{a}+{b}"))
            targets.append(" ".join(str(int(a) + int(b))))
        return sources, targets
    lengths = rng.integers(min_length, max_length + 1, size=num_examples)
    symbols = rng.integers(0, alphabet_size, size=(num_examples, max_length))
    for length, row in zip(lengths, symbols):
        seq = row[:length]
        if task == "reverse":
            out = seq[::-1]
        elif task == "sort":
            out = np.sort(seq)
        else:
            out = seq
        sources.append(" ".join(symbol(s) for s in seq))
        targets.append(" ".join(symbol(s) for s in out))
    return sources, targets
