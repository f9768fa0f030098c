"""Decoding algorithms over a `next_fn`, in TensorFlow graph code.

Decoders never see a model. They call

    next_fn(token_ids (B,) int32, cache, index scalar int32) -> (logits (B, V) float32, cache)

where `cache` is any nest of batch-major tensors and `index` the position of
`token_ids` (0 for the start token). Output position `t` holds the token chosen from the
call at index `t`, so the outputs do not include the start token. Every decoder returns
a `DecodeResult`.

- `greedy_search`: argmax at every step.
- `beam_search`: beam search with the GNMT length penalty and n-best output.
- `sample`: sampling with temperature, top-k and top-p, from a stateless seed.
- `filter_logits`: the temperature / top-k / top-p filter used by `sample`.

Settings may be Python numbers or scalar tensors (per-request values fed into one
traced graph); with `static_shapes=True` (fixed shapes for XLA/TPU) `max_length`,
`beam_size` and `num_return` must be Python ints. Static mode runs exactly `max_length`
steps unless `early_exit=True`, which stops the (still fixed-shape) loop once every
sequence has ended; XLA compiles that data-dependent loop condition.
"""

from kerastx.decoding.beam_search import beam_search
from kerastx.decoding.decode_result import DecodeResult
from kerastx.decoding.filter_logits import filter_logits
from kerastx.decoding.greedy_search import greedy_search
from kerastx.decoding.sample import sample

__all__ = ["DecodeResult", "beam_search", "filter_logits", "greedy_search", "sample"]
