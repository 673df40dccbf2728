"""The GLM network (GLM_SPEC.md section 4) as a Flax linen module.

Pre-LayerNorm transformer with word + position + block-position embeddings, fused QKV
attention under GLM's blank-infilling mask, tanh GeLU, a final LayerNorm and an output
layer tied to the word embedding. Parameters carry logical axis names
('vocab', 'embed', 'qkv', 'heads', 'kv', 'mlp', 'layers', 'positions') and activations carry
logical sharding constraints, so a rules table alone decides the parallelism.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import gin
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from glm_jax.kernels import cudnn as cudnn_lib
from glm_jax.kernels import mask as mask_lib
from glm_jax.kernels import select
from glm_jax.kernels import splash as splash_lib
from glm_jax.kernels import xla as xla_lib
from glm_jax.kernels.cpu import attention as cpu_attention
from glm_jax.kernels.cpu import dropout as dropout_lib
from glm_jax.kernels.cpu import matmul as cpu_matmul

MASK_FILL = mask_lib.MASK_FILL
attention_mask = mask_lib.attention_mask

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# The attention cores' outputs and log-sum-exps (glm_jax/kernels/cpu/attention.py, splash.py)
# are [B, N, T, D] and [B, N, T]: the dot policies keep them too, so the backward does not rerun
# the forward core. The CPU layer's projections (glm_jax/kernels/cpu/matmul.py) are custom_vjp
# calls, named so that these policies save them.
_ATTENTION_RESIDUALS = jax.checkpoint_policies.save_only_these_names(
    "attention_out", "attention_lse", cpu_matmul.OUTPUT_NAME)
_REMAT_POLICIES = {
    "full": None,  # save nothing; recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots, _ATTENTION_RESIDUALS),
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, _ATTENTION_RESIDUALS),
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class GLMConfig:
  """Sizes and numerics of a GLM network; model presets live in configs/models/*.gin."""

  vocab_size: int = 30592
  num_layers: int = 12
  hidden_size: int = 768
  num_heads: int = 12
  ffn_size: Optional[int] = None  # None -> 4 * hidden_size
  max_sequence_length: int = 512  # position tables have max_sequence_length + 1 rows
  embedding_dropout: float = 0.1
  attention_dropout: float = 0.1
  hidden_dropout: float = 0.1
  dropout_implementation: str = "hash"  # 'hash' (fast counter-based) or 'threefry' (nn.Dropout)
  # 'auto' (the fastest kernel the mesh's platform supports for the call), 'xla', 'cudnn',
  # 'splash' or 'cpu_blocked': glm_jax/kernels/ (docs/performance.md, "Attention kernels").
  attention_kernel: str = "auto"
  layernorm_epsilon: float = 1e-5
  dtype: str = "float32"  # compute dtype: 'float32' or 'bfloat16'
  param_dtype: str = "float32"
  remat_policy: str = "none"  # 'none', 'full', 'dots', 'dots_no_batch'
  scan_layers: bool = True
  initializer_std: float = 0.02

  def __post_init__(self):
    from glm_jax import settings  # pylint: disable=g-import-not-at-top
    cls = type(self)
    settings.check_types(cls, dataclasses.asdict(self))
    for name in ("vocab_size", "num_layers", "hidden_size", "num_heads", "ffn_size",
                 "max_sequence_length"):
      settings.at_least(cls, name, getattr(self, name), 1)
    for name in ("embedding_dropout", "attention_dropout", "hidden_dropout"):
      settings.in_range(cls, name, getattr(self, name), 0.0, 1.0)
    settings.in_range(cls, "layernorm_epsilon", self.layernorm_epsilon, 0.0, math.inf,
                      low_open=True)
    settings.in_range(cls, "initializer_std", self.initializer_std, 0.0, math.inf)
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
          "pick sizes where it is.")
    if self.dtype not in _DTYPES or self.param_dtype not in _DTYPES:
      raise ValueError(
          f"dtype/param_dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}/"
          f"{self.param_dtype!r}.")
    if self.dropout_implementation not in dropout_lib.IMPLEMENTATIONS:
      raise ValueError(
          f"dropout_implementation must be one of {list(dropout_lib.IMPLEMENTATIONS)}, got "
          f"{self.dropout_implementation!r}.")
    if self.attention_kernel not in select.KERNELS:
      raise ValueError(f"attention_kernel must be one of {list(select.KERNELS)}, got "
                       f"{self.attention_kernel!r}.")
    if self.remat_policy != "none" and self.remat_policy not in _REMAT_POLICIES:
      raise ValueError(
          f"remat_policy must be 'none' or one of {sorted(_REMAT_POLICIES)}, got "
          f"{self.remat_policy!r}.")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def mlp_size(self) -> int:
    return self.ffn_size or 4 * self.hidden_size

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def parameter_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "GLMConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "GLMConfig":
    values = dict(values)
    # Configs saved before attention_kernel named the attention core this way.
    legacy = values.pop("attention_implementation", None)
    if legacy is not None and "attention_kernel" not in values:
      values["attention_kernel"] = "xla" if legacy == "autodiff" else "auto"
    # A saved config's platform kernel is what its run used (a GPU run's 'cudnn'); loaded
    # elsewhere (evaluated on a CPU) it must not fail: 'auto' picks it again where it applies.
    if values.get("attention_kernel") in ("cudnn", "splash", "cpu_blocked"):
      values["attention_kernel"] = "auto"
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"Unknown GLMConfig fields {sorted(unknown)}; known: {sorted(known)}.")
    return cls(**values)


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def _param(module: nn.Module, name: str, init, shape, axes, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


def _constrain(x, axes):
  return nn.with_logical_constraint(x, axes)


def gelu_tanh(x):
  """The reference's GeLU: the tanh approximation ("OpenAI gelu")."""
  return 0.5 * x * (1.0 + jnp.tanh(0.7978845608028654 * x * (1.0 + 0.044715 * x * x)))


class LayerNorm(nn.Module):
  """LayerNorm with biased variance, computed in float32, logical axis 'embed'."""

  epsilon: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):
    h = x.shape[-1]
    scale = _param(self, "scale", nn.initializers.ones, (h,), ("embed",), self.param_dtype)
    bias = _param(self, "bias", nn.initializers.zeros, (h,), ("embed",), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon)
    y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(self.dtype)


def _project(spec: str, x, w, cpu_layer: bool, preferred_element_type=None):
  """The network's projections: the CPU layer's planned weight gradients, or jnp.einsum."""
  if cpu_layer:
    return cpu_matmul.einsum(spec, x, w, preferred_element_type)
  y = jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)
  return checkpoint_name(y, cpu_matmul.OUTPUT_NAME)


class SelfAttention(nn.Module):
  """Fused-QKV multi-head attention with GLM masking and an optional key/value cache.

  `kernels` (glm_jax.kernels.select.choose, made once per call of GLM) names the attention
  kernel; all of them compute the same function, decoding always reads the cache with einsums.
  """

  config: GLMConfig
  kernels: select.Choice

  @nn.compact
  def __call__(self, x, mask, sep, segment_ids, deterministic: bool, decode: bool):
    cfg = self.config
    dtype, pdtype = cfg.compute_dtype, cfg.parameter_dtype
    h, heads, d = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    out_std = cfg.initializer_std / math.sqrt(2.0 * cfg.num_layers)
    cpu_layer = self.kernels.cpu_layer

    qkv_kernel = _param(self, "qkv_kernel", _normal(cfg.initializer_std), (h, 3, heads, d),
                        ("embed", "qkv", "heads", "kv"), pdtype)
    qkv_bias = _param(self, "qkv_bias", nn.initializers.zeros, (3, heads, d),
                      ("qkv", "heads", "kv"), pdtype)
    qkv = _project("bth,hcnd->btcnd", x, qkv_kernel.astype(dtype), cpu_layer) + qkv_bias.astype(
        dtype)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [batch, length, heads, head_dim]
    act = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
    q, k, v = _constrain(q, act), _constrain(k, act), _constrain(v, act)

    # The reference scales the keys: q @ (k / sqrt(d))^T.
    k = k * jnp.asarray(1.0 / math.sqrt(d), dtype)
    dropout_on = not deterministic and cfg.attention_dropout > 0
    if decode:
      cached_key, cached_value, mask = self._update_cache(k, v, sep, mask)
      out = xla_lib.cached_attention(q, cached_key, cached_value, mask,
                                     self._dropout(dropout_on))
    else:
      out = self._attention(q, k, v, mask, sep, segment_ids, dropout_on)
    out = _constrain(out, act)

    out_kernel = _param(self, "out_kernel", _normal(out_std), (heads, d, h),
                        ("heads", "kv", "embed"), pdtype)
    out_bias = _param(self, "out_bias", nn.initializers.zeros, (h,), ("embed",), pdtype)
    return _project("btnd,ndh->bth", out, out_kernel.astype(dtype), cpu_layer) + out_bias.astype(
        dtype)

  def _hash_key(self, dropout_on: bool):
    """One hash-dropout key per layer call: every kernel draws the same mask from it."""
    if dropout_on and self.config.dropout_implementation == "hash":
      return dropout_lib.hash_key(self)
    return None

  def _dropout(self, dropout_on: bool, key=None):
    """probs -> dropped probs for the einsum paths (None without dropout)."""
    cfg = self.config
    if not dropout_on:
      return None
    if cfg.dropout_implementation != "hash":
      drop = nn.Dropout(cfg.attention_dropout)
      return lambda probs: drop(probs, deterministic=False)
    key = self._hash_key(dropout_on) if key is None else key
    rate = cfg.attention_dropout
    return lambda probs: dropout_lib.hash_dropout(probs, key, rate)

  def _attention(self, q, k, v, mask, sep, segment_ids, dropout_on: bool):
    """q, k (scaled), v [B, T, N, D] -> [B, T, N, D] with the chosen kernel.

    mask: the dense [B, T, T] mask where the kernel takes one (GLM.__call__ builds it only
    then), else None and the kernel reads sep / segment_ids.
    """
    kernel = self.kernels.attention
    if kernel == "cpu_blocked":
      key = self._hash_key(dropout_on)
      rate = self.config.attention_dropout if key is not None else 0.0
      key = jnp.zeros((2,), jnp.uint32) if key is None else key
      heads_major = lambda t: jnp.swapaxes(t, 1, 2)  # pylint: disable=unnecessary-lambda-assignment
      out = cpu_attention.attention_core(heads_major(q), heads_major(k), heads_major(v), mask,
                                         key, rate)
      return heads_major(out)
    if kernel == "cudnn":
      if mask is not None:
        return cudnn_lib.masked_attention(q, k, v, mask)
      return cudnn_lib.attention(q, k, v, sep, segment_ids)
    if kernel == "splash":
      return splash_lib.attention(q, k, v, sep, segment_ids)
    return xla_lib.attention(q, k, v, mask, self._dropout(dropout_on))

  def _update_cache(self, k, v, sep, valid):
    """Appends scaled k / v [B, T, heads, d] to the cache; returns the cache and the mask.

    valid [B, T] (or None: all) marks the new keys later queries may see; padding is False.
    """
    batch, length = k.shape[0], k.shape[1]
    k = jnp.transpose(k, (0, 2, 3, 1))  # [batch, heads, head_dim, length]
    v = jnp.transpose(v, (0, 2, 1, 3))  # [batch, heads, length, head_dim]
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    key_valid = self.variable("cache", "key_valid", jnp.zeros, (batch, length), jnp.bool_)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:
      # Creating the cache (init_cache): its shape is that of the dummy input.
      index = jnp.arange(length)
      return k, v, attention_mask(index, index, sep)

    start = cache_index.value
    max_length = cached_key.value.shape[-1]
    new_valid = jnp.ones((batch, length), jnp.bool_) if valid is None else valid.astype(jnp.bool_)
    cached_key.value = jax.lax.dynamic_update_slice(
        cached_key.value, k.astype(cached_key.value.dtype), (0, 0, 0, start))
    cached_value.value = jax.lax.dynamic_update_slice(
        cached_value.value, v.astype(cached_value.value.dtype), (0, 0, start, 0))
    key_valid.value = jax.lax.dynamic_update_slice(key_valid.value, new_valid, (0, start))
    cache_index.value = start + length

    # Earlier entries are before every new query (j <= i); unwritten ones are not valid.
    keys = jnp.arange(max_length)
    queries = start + jnp.arange(length)
    chunk_sep = None if sep is None else start + sep
    mask = attention_mask(queries, keys, chunk_sep, key_valid=key_valid.value)
    return cached_key.value, cached_value.value, mask


class MLP(nn.Module):
  """h -> 4h -> h with tanh GeLU."""

  config: GLMConfig
  kernels: select.Choice

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype, pdtype = cfg.compute_dtype, cfg.parameter_dtype
    h, f = cfg.hidden_size, cfg.mlp_size
    out_std = cfg.initializer_std / math.sqrt(2.0 * cfg.num_layers)
    cpu_layer = self.kernels.cpu_layer
    wi = _param(self, "wi_kernel", _normal(cfg.initializer_std), (h, f), ("embed", "mlp"), pdtype)
    bi = _param(self, "wi_bias", nn.initializers.zeros, (f,), ("mlp",), pdtype)
    wo = _param(self, "wo_kernel", _normal(out_std), (f, h), ("mlp", "embed"), pdtype)
    bo = _param(self, "wo_bias", nn.initializers.zeros, (h,), ("embed",), pdtype)
    y = _project("bth,hf->btf", x, wi.astype(dtype), cpu_layer) + bi.astype(dtype)
    y = gelu_tanh(y)
    y = _constrain(y, ("activation_batch", "activation_length", "activation_mlp"))
    return _project("btf,fh->bth", y, wo.astype(dtype), cpu_layer) + bo.astype(dtype)


class TransformerLayer(nn.Module):
  """One pre-LN layer: x + Drop(Attn(LN1 x)), then h + Drop(MLP(LN2 h))."""

  config: GLMConfig
  kernels: select.Choice

  @nn.compact
  def __call__(self, x, mask, sep, segment_ids, deterministic: bool, decode: bool):
    cfg = self.config
    ln = functools.partial(LayerNorm, epsilon=cfg.layernorm_epsilon, dtype=cfg.compute_dtype,
                           param_dtype=cfg.parameter_dtype)
    drop = dropout_lib.Dropout(cfg.hidden_dropout, cfg.dropout_implementation)
    a = SelfAttention(cfg, self.kernels, name="attention")(
        ln(name="input_layernorm")(x), mask, sep, segment_ids, deterministic, decode)
    x = x + drop(a, deterministic=deterministic)
    m = MLP(cfg, self.kernels, name="mlp")(ln(name="post_attention_layernorm")(x))
    x = x + drop(m, deterministic=deterministic)
    x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    if cfg.scan_layers:
      return x, None
    return x


def _layer_class(cfg: GLMConfig):
  if cfg.remat_policy == "none":
    return TransformerLayer
  return nn.remat(TransformerLayer, policy=_REMAT_POLICIES[cfg.remat_policy],
                  prevent_cse=not cfg.scan_layers, static_argnums=(5, 6))


def _is_packed(sep, segment_ids) -> bool:
  return segment_ids is not None or (sep is not None and jnp.ndim(sep) == 2)


class GLM(nn.Module):
  """GLM: tokens [B, T], positions [B, 2, T] -> float32 logits [B, T, vocab]."""

  config: GLMConfig

  @nn.compact
  def __call__(self, tokens, positions, sep=None, mask=None, segment_ids=None,
               deterministic: bool = True, decode: bool = False):
    cfg = self.config
    dtype, pdtype = cfg.compute_dtype, cfg.parameter_dtype
    if mask is not None and (sep is not None or segment_ids is not None):
      raise ValueError("Pass either an explicit mask or sep/segment_ids, not both.")
    if decode and mask is not None:
      raise ValueError("decode=True supports only the sep form, not an explicit mask.")
    batch, length = tokens.shape
    kernels = select.choose(
        cfg, select.current_target(), seq_len=length,
        attention_dropout=not deterministic and cfg.attention_dropout > 0,
        dense_mask=mask is not None, packed=_is_packed(sep, segment_ids), log=not decode)

    embedding = _param(self, "word_embeddings", _normal(cfg.initializer_std),
                       (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), pdtype)
    pos_table = _param(self, "position_embeddings", _normal(cfg.initializer_std),
                       (cfg.max_sequence_length + 1, cfg.hidden_size), ("positions", "embed"),
                       pdtype)
    block_table = _param(self, "block_position_embeddings", _normal(cfg.initializer_std),
                         (cfg.max_sequence_length + 1, cfg.hidden_size), ("positions", "embed"),
                         pdtype)
    # Look-ups read tables gathered along 'embed' (as FSDP gathers any weight before use), so
    # their [batch, length, embed] outputs are sharded by batch, not by embed: no resharding.
    # The sum runs in the wider of the parameter and compute dtypes (float16 weights of a
    # released checkpoint are added in float32 when computing in float32).
    wide = jnp.promote_types(pdtype, dtype)
    gathered = lambda table, axis: _constrain(table, (axis, None))
    take = lambda table, axis, ids: jnp.take(gathered(table, axis), ids, axis=0).astype(wide)
    x = (take(embedding, "vocab", tokens) + take(pos_table, "positions", positions[:, 0])
         + take(block_table, "positions", positions[:, 1])).astype(dtype)  # [batch, length, embed]
    x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    x = dropout_lib.Dropout(cfg.embedding_dropout, cfg.dropout_implementation)(
        x, deterministic=deterministic)

    if decode:
      # The layers read `mask` as the validity [B, T] of the new keys (segment_ids != 0).
      mask, segment_ids = (None if segment_ids is None else segment_ids != 0), None
    elif mask is not None:
      mask = mask.astype(jnp.bool_)
    elif kernels.attention in ("xla", "cpu_blocked") or (
        kernels.attention == "cudnn" and _is_packed(sep, segment_ids)):
      # The kernels that read a dense mask get it built once for all layers.
      index = jnp.arange(length)
      full = sep if sep is not None else jnp.full((batch,), length, jnp.int32)
      mask = attention_mask(index, index, full, segment_ids)  # [batch, length, length]
    # Otherwise the fused kernels read sep / segment_ids (sep None: fully bidirectional).

    layer_cls = _layer_class(cfg)
    if cfg.scan_layers:
      stack = nn.scan(
          layer_cls,
          variable_axes={"params": 0, "cache": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * 5,
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"},
      )(cfg, kernels, name="layers")
      x, _ = stack(x, mask, sep, segment_ids, deterministic, decode)
    else:
      for i in range(cfg.num_layers):
        x = layer_cls(cfg, kernels, name=f"layers_{i}")(x, mask, sep, segment_ids,
                                                         deterministic, decode)

    x = LayerNorm(cfg.layernorm_epsilon, dtype, pdtype, name="final_layernorm")(x)
    # Tied output layer, no bias; float32 logits whatever the compute dtype.
    logits = _project("bth,vh->btv", x, embedding.astype(dtype), kernels.cpu_layer, jnp.float32)
    return _constrain(logits, ("activation_batch", "activation_length", "activation_vocab"))


def init_params(config: GLMConfig, rng: jax.Array, batch_size: int = 1, length: int = 8):
  """Fresh parameters (boxed with logical axis metadata stripped)."""
  tokens = jnp.zeros((batch_size, length), jnp.int32)
  positions = jnp.zeros((batch_size, 2, length), jnp.int32)
  variables = GLM(config).init(rng, tokens, positions)
  return nn.meta.unbox(variables["params"])


def abstract_params(config: GLMConfig):
  """ShapeDtypeStructs of the parameters, still boxed with their logical axis names."""
  tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  positions = jax.ShapeDtypeStruct((1, 2, 8), jnp.int32)
  return jax.eval_shape(
      lambda t, p: GLM(config).init(jax.random.PRNGKey(0), t, p)["params"], tokens, positions)


def init_cache(config: GLMConfig, batch_size: int, max_length: int):
  """An empty key/value cache for `max_length` tokens of `batch_size` rows."""
  tokens = jnp.zeros((batch_size, max_length), jnp.int32)
  positions = jnp.zeros((batch_size, 2, max_length), jnp.int32)
  shapes = jax.eval_shape(
      lambda: GLM(config).init(jax.random.PRNGKey(0), tokens, positions, decode=True)["cache"])
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
