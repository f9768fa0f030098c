"""One training step and one cached decoding step of each family at the sizes users run.

Tiny test models hid a tied output projection whose gradient needed 33 GB at an 8k
vocabulary (issue 11). These cases run the real Trainer's compiled step at real widths
and vocabularies, 4096-token batches (`kerastx.bench_memory.CASES`):

- seq2seq_32k: d512, 8 heads, 2+2 layers, ffn 2048, one 32k vocabulary for source,
  target and output (share_embeddings all), batches of 128 x 32;
- decoder_lm_32k: d512, 8 heads, 2 layers, ffn 2048, 32k tied vocabulary, 32 x 128;
- classifier_32k: d512, 8 heads, 2 layers, ffn 2048, 32k vocabulary, 16 classes, 32 x 128;

and assert that TensorFlow's allocator peak of a step stays within a factor of the
estimate from the shapes (`kerastx.train.memory.estimate_step`: parameters, optimizer
state, gradients, activations, logits). Measured on the 2-core CPU: 0.95-1.05 of the
estimate for training, 1.09 for decoding. A `(B, T, V, D)` tensor would be 268 GB here;
anything above half the estimate fails. Each case runs in a fresh process (a clean
allocator and resident set): about 50 s in all.
"""

import math

import pytest

from kerastx import bench_memory

pytestmark = pytest.mark.slow

# The measured peak over the estimate must lie in this range.
LOW, HIGH = 0.6, 1.5


@pytest.fixture(scope="module", params=bench_memory.REAL_SIZE_CASES)
def train_row(request):
    return bench_memory.isolated("measure_train", request.param, 2)


def test_training_step_memory_within_the_estimate(train_row):
    row = train_row
    b, t = row["batch_shape"]
    assert b * t == 4096 and row["vocab_size"] == 32000
    estimate = row["estimate"]["total"]
    ratio = row["tf_peak_bytes"] / estimate
    assert LOW <= ratio <= HIGH, (row["case"], ratio, row["tf_peak_bytes"], row["estimate"])
    # The process itself (allocator slack, graphs, threads) stays within 2x as well.
    assert row["rss_peak_bytes"] <= 2 * estimate, row


def test_training_step_learns_from_a_sane_start(train_row):
    row = train_row
    losses = row["losses"]
    assert all(math.isfinite(x) for x in losses), losses
    # Random labels: the first loss is about log(classes) (a few nats above for tied
    # LMs, whose untrained output favours the input token); two steps on the same
    # batch lower it.
    classes = 16 if row["type"] == "encoder_classifier" else row["vocab_size"]
    assert 0.5 * math.log(classes) < losses[0] < 1.5 * math.log(classes), losses
    assert losses[-1] < losses[0], losses


def test_parameter_counts_are_the_configured_models(train_row):
    # Embeddings 32000 x 512 once (tied or shared); the rest from the layer formulas of
    # Seq2SeqTransformer's docstring: encoder layer 3,152,384, decoder layer 4,204,032,
    # a pre-norm stack's final norm 1,024, output bias 32,000.
    enc, dec, table = 3_152_384, 4_204_032, 32000 * 512
    want = {
        "seq2seq_32k": table + 32000 + 2 * enc + 2 * dec + 2 * 1024,
        # Decoder-only layers have no cross-attention: 4 (D^2 + D) + 2 D less.
        "decoder_lm_32k": table + 32000 + 2 * (dec - 4 * (512 * 512 + 512) - 1024) + 1024,
        "classifier_32k": table + 2 * enc + 1024 + 512 * 16 + 16,
    }
    assert train_row["parameters"] == want[train_row["case"]]


@pytest.mark.parametrize("case", ["seq2seq_32k", "decoder_lm_32k"])
def test_cached_decoding_step_at_real_size(case):
    row = bench_memory.isolated("measure_decode", case)
    ratio = row["tf_peak_bytes"] / row["estimate_bytes"]
    assert LOW <= ratio <= HIGH, (case, ratio, row)
    # The cached step's logits are those of one full pass over the same prefix.
    assert row["position_gap"] > 1.0
    assert row["max_abs_error_vs_full_pass"] <= 1e-4 * row["position_gap"], row
