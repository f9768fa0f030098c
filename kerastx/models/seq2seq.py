"""Encoder-decoder Transformer (Vaswani et al., 2017) with cached incremental decoding."""

from __future__ import annotations

import keras
from keras import ops

from kerastx.layers import _common
from kerastx.layers import masks as masks_lib
from kerastx.layers.decoder_layer import DecoderLayer
from kerastx.layers.encoder_layer import EncoderLayer
from kerastx.layers.token_embedding import TokenEmbedding
from kerastx.models import _base

SHARE_EMBEDDINGS = ("none", "target_output", "all")


@keras.saving.register_keras_serializable(package="kerastx")
class Seq2SeqTransformer(_base.TransformerModelBase):
    """Encoder-decoder Transformer returning float32 next-token logits.

    Inputs are int32 ids padded with 0; padding masks come from `ids != 0`. Embeddings
    are multiplied by `sqrt(d_model)` (`scale_embeddings`), positions added
    (`position_encoding`: sinusoidal, learned, or RoPE inside self-attention), then
    dropout. A per-example condition (`num_conditions` ids or a `condition_dim` vector)
    is embedded to `(B, D)` and added to the decoder input at every position.

    Parameter count (sinusoidal positions, LayerNorm, relu/gelu, no MoE, no condition),
    `D = d_model`, `F = ffn_dim`:

    - attention block `A = 4 (D^2 + D)` (query, key, value, output kernels + biases)
    - feed-forward `FF = 2 D F + F + D`; a norm `N = 2 D` (gamma, beta)
    - encoder layer `A + FF + 2N`; decoder layer `2A + FF + 3N`; pre-norm adds one
      final norm per stack (`2N`)
    - embeddings: `"all"`: `V D + V` (one table, tied output, output bias);
      `"target_output"`: `(V_s + V_t) D + V_t`; `"none"`: `(V_s + 2 V_t) D + V_t`

    Transformer base (D 512, 8 heads, 6+6 layers, F 2048, one 37000 vocabulary shared
    by source, target and output, pre-norm): `37000 * 512 + 37000` +
    `6 * 3,152,384` + `6 * 4,204,032` + `2 * 1,024` = 63,121,544 parameters.

    Args:
        source_vocab_size: int. Source vocabulary size `V_s` (from the data).
        target_vocab_size: int. Target vocabulary size `V_t` (from the data).
        num_encoder_layers: int. Defaults to 6.
        num_decoder_layers: int. Defaults to 6.
        share_embeddings: str. `"none"`, `"target_output"` (decoder input embedding tied
            with the output projection) or `"all"` (source, target and output; needs equal
            vocabulary sizes). Defaults to `"none"`.
        **kwargs: the arguments shared by every kerastx model (`d_model`, `num_heads`,
            `ffn_dim`, `activation`, `dropout`, `attention_dropout`, `norm`,
            `norm_position`, `norm_epsilon`, `position_encoding`, `max_length`,
            `scale_embeddings`, the MoE options `num_experts`, `experts_top_k`,
            `expert_capacity_factor`, `moe_every`, `moe_aux_loss_weight`,
            `moe_z_loss_weight`, and the condition's `num_conditions`, `condition_dim`),
            documented with their defaults in `kerastx.models._base.TransformerModelBase`;
            and the standard `keras.Model` arguments (`name`, `dtype`).

    Call arguments:
        inputs: dict with `"source_ids"` `(B, S)`, `"target_in_ids"` `(B, T)` int32 and,
            with a condition, `"condition"` `(B,)` int or `(B, C)` float.
        training: bool. Enables dropout.

    Returns:
        float32 logits `(B, T, V_t)`.

    Example:

    >>> model = Seq2SeqTransformer(40, 50, d_model=32, num_heads=4, num_encoder_layers=2,
    ...                            num_decoder_layers=2, ffn_dim=64)
    >>> logits = model({"source_ids": source_ids, "target_in_ids": target_in_ids})
    >>> state = model.encode(source_ids)
    >>> cache = model.init_cache(state, max_length=20)
    >>> logits, cache = model.decode_step(tf.fill([B], 1), cache, tf.constant(0))
    """

    def __init__(
        self,
        source_vocab_size,
        target_vocab_size,
        *,
        num_encoder_layers=6,
        num_decoder_layers=6,
        share_embeddings="none",
        **kwargs,
    ):
        _common.check_int("source_vocab_size", source_vocab_size)
        _common.check_int("target_vocab_size", target_vocab_size)
        _common.check_int("num_encoder_layers", num_encoder_layers)
        _common.check_int("num_decoder_layers", num_decoder_layers)
        _common.check_choice("share_embeddings", share_embeddings, SHARE_EMBEDDINGS)
        if share_embeddings == "all" and source_vocab_size != target_vocab_size:
            raise ValueError(
                "share_embeddings='all' needs equal vocabulary sizes. Received: "
                f"source_vocab_size={source_vocab_size}, target_vocab_size={target_vocab_size}"
            )
        super().__init__(**kwargs)
        self.source_vocab_size = source_vocab_size
        self.target_vocab_size = target_vocab_size
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.share_embeddings = share_embeddings

    def build(self, inputs_shape=None):
        d = self.d_model
        self.target_embedding = TokenEmbedding(
            self.target_vocab_size,
            d,
            tie_weights=self.share_embeddings != "none",
            dtype=self.dtype_policy,
            name="target_embedding",
        )
        self.target_embedding.build()
        if self.share_embeddings == "all":
            self.source_embedding = self.target_embedding
        else:
            self.source_embedding = TokenEmbedding(
                self.source_vocab_size,
                d,
                use_output_bias=False,  # never projects to logits
                dtype=self.dtype_policy,
                name="source_embedding",
            )
            self.source_embedding.build()
        self.source_positions = self._make_positions("source_positions")
        self.target_positions = self._make_positions("target_positions")
        self.source_dropout = self._make_dropout("source_dropout")
        self.target_dropout = self._make_dropout("target_dropout")
        self._condition = self._make_condition()
        shape = (None, None, d)
        self.encoder_layers = self._make_layers(
            EncoderLayer, self.num_encoder_layers, "encoder_layer", shape
        )
        self.decoder_layers = self._make_layers(
            DecoderLayer, self.num_decoder_layers, "decoder_layer", shape, shape
        )
        self.encoder_norm = self._make_final_norm("encoder_norm")
        self.decoder_norm = self._make_final_norm("decoder_norm")
        self.built = True

    def _transformer_layers(self):
        return self.encoder_layers + self.decoder_layers

    def call(self, inputs, training=False):
        condition = inputs.get("condition")
        state = self.encode(inputs["source_ids"], training=training)
        return self.decode(inputs["target_in_ids"], state, condition=condition, training=training)

    def encode(self, source_ids, condition=None, training=False):
        """Runs the encoder once.

        Args:
            source_ids: int tensor `(B, S)`, 0 = padding.
            condition: optional condition (`(B,)` ids or `(B, C)` floats). The encoder
                does not use it; when given, its embedding is kept in the state under
                `"condition"` so that `init_cache(state, ...)` needs no second copy.
            training: bool. Enables dropout.

        Returns:
            dict `{"memory": (B, S, D) compute dtype, "memory_mask": (B, S) bool}`
            (`True` = real source token), plus `"condition": (B, D)` if given.
        """
        self._ensure_built()
        memory_mask = masks_lib.padding_mask(source_ids)  # (B, S) bool
        x = self._embed(
            self.source_embedding,
            self.source_positions,
            self.source_dropout,
            source_ids,
            training=training,
        )
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=memory_mask, training=training)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        state = {"memory": x, "memory_mask": memory_mask}
        if condition is not None:
            state["condition"] = self._condition_vector(condition)
        return state

    def decode(
        self,
        target_in_ids,
        encoder_state,
        condition=None,
        training=False,
        return_attention_scores=False,
    ):
        """Full (teacher-forced, causal) decoder pass over a target prefix.

        Args:
            target_in_ids: int tensor `(B, T)`, BOS first, 0 = padding.
            encoder_state: dict from `encode`.
            condition: the condition, or None to use `encoder_state["condition"]`.
            training: bool. Enables dropout.
            return_attention_scores: bool. Also return every decoder layer's attention
                probabilities (see `DecoderLayer`). Defaults to False.

        Returns:
            float32 logits `(B, T, V_t)`; with `return_attention_scores`, `(logits,
            scores)`, `scores` a list with one dict per decoder layer:
            `"self_attention"` `(B, N, T, T)`, `"cross_attention"` `(B, N, T, S)`
            (compute dtype).
        """
        self._ensure_built()
        condition = self._state_condition(encoder_state, condition)
        padding = masks_lib.padding_mask(target_in_ids)  # (B, T)
        x = self._embed(
            self.target_embedding,
            self.target_positions,
            self.target_dropout,
            target_in_ids,
            condition=condition,
            training=training,
        )
        memory, memory_mask = encoder_state["memory"], encoder_state["memory_mask"]
        scores = []
        for layer in self.decoder_layers:
            x = layer(
                x,
                memory,
                padding_mask=padding,
                memory_mask=memory_mask,
                return_attention_scores=return_attention_scores,
                training=training,
            )
            if return_attention_scores:
                x, layer_scores = x
                scores.append(layer_scores)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        logits = self.target_embedding(x, reverse=True)  # (B, T, V) float32
        return (logits, scores) if return_attention_scores else logits

    def cross_attention_weights(self, inputs, layer=-1):
        """Cross-attention probabilities of one decoder layer in a teacher-forced pass.

        Runs the model as `call(inputs, training=False)` does and returns what the
        layer's cross-attention computed (before attention dropout, which is off).

        Args:
            inputs: dict as for `call`: `"source_ids"` `(B, S)`, `"target_in_ids"`
                `(B, T)` and, with a condition, `"condition"`.
            layer: int. Index of the decoder layer; negative counts from the end.
                Defaults to -1 (the last).

        Returns:
            float32 tensor `(B, N, T, S)` (`N = num_heads`): per head, each target
            position's distribution over the source positions; rows sum to 1 over the
            real source tokens, and padded sources get 0.
        """
        index = range(self.num_decoder_layers)[layer]  # IndexError names a bad layer
        state = self.encode(inputs["source_ids"], training=False)
        _, scores = self.decode(
            inputs["target_in_ids"],
            state,
            condition=inputs.get("condition"),
            return_attention_scores=True,
            training=False,
        )
        return ops.cast(scores[index]["cross_attention"], "float32")  # (B, N, T, S)

    def init_cache(self, encoder_state, max_length, condition=None):
        """Builds the decoding cache for one batch of sources.

        Args:
            encoder_state: dict from `encode`.
            max_length: int. Number of decoding steps the cache holds (`T_max`).
            condition: the condition, or None to use `encoder_state["condition"]`.

        Returns:
            dict of batch-major tensors (axis 0 = `B`, fixed shapes):
            `"memory_mask"` `(B, S)` bool; `"layers"`: one dict per decoder layer with
            `"self_key"`, `"self_value"` `(B, T_max, N, H)` zeros and `"cross_key"`,
            `"cross_value"` `(B, S, N, H)`; with a condition, `"condition"` `(B, D)`.
        """
        self._ensure_built()
        self._check_cache_length(max_length)
        memory = encoder_state["memory"]
        batch = ops.shape(memory)[0]
        cache = {
            "memory_mask": ops.cast(encoder_state["memory_mask"], "bool"),
            "layers": [
                layer.init_cache(batch, max_length, memory=memory) for layer in self.decoder_layers
            ],
        }
        condition = self._state_condition(encoder_state, condition)
        if condition is not None:
            cache["condition"] = condition
        return cache

    def decode_step(self, token_ids, cache, index, training=False):
        """Decodes one position for every sequence, reading and updating the cache.

        Works eagerly, in `tf.function`, inside `tf.while_loop` and under XLA: `index`
        may be a traced scalar (no Python value is derived from it).

        Args:
            token_ids: int tensor `(B,)`, the tokens at position `index` (BOS at 0).
            cache: dict from `init_cache` (or a previous `decode_step`).
            index: int or scalar int32 tensor. Position of `token_ids`.
            training: bool. Enables dropout. Defaults to False.

        Returns:
            `(logits, cache)`: float32 logits `(B, V_t)` for the next token, and the
            cache with this position's keys and values written.
        """
        index = ops.cast(index, "int32")
        ids = ops.cast(token_ids, "int32")[:, None]  # (B, 1)
        x = self._embed(
            self.target_embedding,
            self.target_positions,
            self.target_dropout,
            ids,
            start_index=index,
            condition=cache.get("condition"),
            training=training,
        )
        padding = masks_lib.padding_mask(ids)  # keeps PAD steps out of expert routing
        layers = []
        for layer, layer_cache in zip(self.decoder_layers, cache["layers"]):
            x, layer_cache = layer(
                x,
                padding_mask=padding,
                memory_mask=cache["memory_mask"],
                cache=layer_cache,
                cache_index=index,
                training=training,
            )
            layers.append(layer_cache)
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        logits = self.target_embedding(x, reverse=True)[:, 0, :]  # (B, V) float32
        return logits, {**cache, "layers": layers}

    def _state_condition(self, encoder_state, condition):
        if condition is not None:
            return self._condition_vector(condition)
        if "condition" in encoder_state:
            return encoder_state["condition"]
        return self._condition_vector(None)  # raises if the model needs one

    def get_config(self):
        config = super().get_config()
        config.update(self._base_config())
        config.update(
            {
                "source_vocab_size": self.source_vocab_size,
                "target_vocab_size": self.target_vocab_size,
                "num_encoder_layers": self.num_encoder_layers,
                "num_decoder_layers": self.num_decoder_layers,
                "share_embeddings": self.share_embeddings,
            }
        )
        return config
