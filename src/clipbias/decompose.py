"""Exact head-level decomposition of the CLIP image embedding (METHODS §1).

For an open_clip ViT the final CLS residual splits exactly into

    r = z_emb + Σ_l a_l + Σ_l m_l,   a_l = Σ_h h_{l,h}

(LN_pre-output CLS row, attention output of each block split per head through the
out-projection, MLP output of each block; LayerScale is folded into the terms). With the
LN_post statistics μ, σ of ``r`` frozen, LN_post followed by ``proj`` is affine, so each part
c_k maps to a projected, LN-scaled, norm-divided contribution

    ĉ_k = [γ ⊙ (c_k − ω_k μ 1)/σ + ω_k β] · P / ‖e‖          ("shared" centring, reference)
    ĉ_k = [γ ⊙ (c_k − mean(c_k) 1)/σ + ω_k β] · P / ‖e‖      ("self" centring)

with Σ_k ĉ_k = ê = e/‖e‖ (the normalised image embedding). Shares: 2L+1 blocks (embedding
term, L MLP terms, L attention layers) with ω = 1/(2L+1) each; a head gets ω/H and b_O/H; a
(head, token) pair gets ω/(H·T) and b_O/(H·T).

Implementation: a single pass over the blocks. Each block is evaluated from its own
sub-modules and parameters (``ln_1``, the packed ``attn.in_proj_*``, ``attn.out_proj``,
``ls_1``, ``ln_2``, ``mlp``, ``ls_2``); only the kernel of ``nn.MultiheadAttention`` is
re-expressed (packed in-projection, ``scaled_dot_product_attention``, out-projection), because
the stock module does not expose its per-head outputs and re-running the in-projection next
to it would cost ~25 % extra. The per-head CLS outputs are read off the attention output
before the out-projection, so the only extra work over a plain forward is a few small
einsums on the CLS row. The last block only needs its CLS row, so its query, out-projection
and MLP are evaluated for token 0 only. ``tests/unit/test_decompose.py`` checks all of this
against the stock open_clip forward (hooks on ``ln_post`` and on every block's ``attn``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CENTRINGS = ("shared", "self")
#: ``precision`` of :func:`decompose`: autocast dtype of the matmuls (None = plain float32)
PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}

__all__ = [
    "CENTRINGS",
    "PRECISIONS",
    "Decomposition",
    "ResidualParts",
    "UnsupportedModelError",
    "decompose",
    "get_vision_transformer",
    "residual_parts",
]


class UnsupportedModelError(TypeError):
    """The model's vision tower cannot be decomposed by :func:`decompose`."""


# ----------------------------------------------------------------------------- results


@dataclass
class Decomposition:
    """Per-image contributions ĉ_k (METHODS §1.3); torch float32 tensors on the CPU.

    Shapes: ``cls`` [N, D] (LN_pre-output CLS row z_emb), ``mlp`` [N, L, D], ``heads``
    [N, L, H, D], ``embedding`` [N, D] (ê, unit norm), ``norm`` [N] (‖e‖ of the unnormalised
    ``encode_image`` output), ``ln_mu`` / ``ln_sigma`` [N] (frozen LN_post statistics of the
    final CLS residual), ``spatial`` {(layer, head): [N, T, D]} token-level terms
    (T = 1 + number of patches; token 0 is the CLS key) summing over T to ``heads[:, l, h]``.
    ``total()`` equals ``embedding`` up to float rounding.
    """

    cls: torch.Tensor
    mlp: torch.Tensor
    heads: torch.Tensor
    embedding: torch.Tensor
    norm: torch.Tensor
    ln_mu: torch.Tensor
    ln_sigma: torch.Tensor
    spatial: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    centring: str = "shared"

    @property
    def n_layers(self) -> int:
        return self.heads.shape[1]

    @property
    def n_heads(self) -> int:
        return self.heads.shape[2]

    def total(self) -> torch.Tensor:
        """Σ_k ĉ_k = cls + Σ_l mlp_l + Σ_{l,h} heads_{l,h}; equals ``embedding``."""
        return self.cls + self.mlp.sum(1) + self.heads.sum((1, 2))

    def rest(self, layers: Iterable[int]) -> torch.Tensor:
        """Everything except the heads of ``layers``: cls + all MLP terms + other layers' heads.

        ``heads[:, layers].sum((1, 2)) + rest(layers) == total()`` (the feature-shard layout).
        """
        keep = sorted({int(i) for i in layers})
        other = [i for i in range(self.n_layers) if i not in keep]
        out = self.cls + self.mlp.sum(1)
        if other:
            out = out + self.heads[:, other].sum((1, 2))
        return out


@dataclass
class ResidualParts:
    """Unprojected residual-stream parts in the width-W space (METHODS §1.2).

    ``cls`` [N, W] = z_emb, ``mlp`` [N, L, W] = m_l, ``heads`` [N, L, H, W] = h_{l,h}
    (b_O/H included, LayerScale applied), ``residual`` [N, W] = the final CLS residual r
    (input of LN_post), ``spatial`` {(l, h): [N, T, W]} = h_{l,h,j}. Tensors stay on the
    model's device in the compute dtype. ``cls + mlp.sum(1) + heads.sum((1, 2)) == residual``.
    """

    cls: torch.Tensor
    mlp: torch.Tensor
    heads: torch.Tensor
    residual: torch.Tensor
    spatial: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- model checks


def get_vision_transformer(model: nn.Module) -> nn.Module:
    """Return the open_clip ``VisionTransformer`` of ``model`` (a CLIP model or its ``.visual``).

    Raises :class:`UnsupportedModelError` for anything :func:`decompose` cannot handle
    exactly: ResNet (``ModifiedResNet``) and timm towers, attentional pooling, pooling other
    than the CLS token, custom attention blocks (qk-norm, scaled cosine attention, ...),
    cross-attention blocks, a pruned head (``proj`` None).
    """
    from open_clip.transformer import (
        LayerScale,
        ResidualAttentionBlock,
        VisionTransformer,
    )

    visual = getattr(model, "visual", model)
    kind = type(visual).__name__
    if kind == "ModifiedResNet":
        raise UnsupportedModelError(
            "ResNet visual towers (open_clip ModifiedResNet, e.g. RN50) have no attention heads "
            "in a residual stream; decompose supports ViT towers only"
        )
    if kind == "TimmModel":
        raise UnsupportedModelError(
            "timm visual towers are not supported; use an open_clip VisionTransformer config"
        )
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(
            f"expected an open_clip VisionTransformer visual tower, got {kind}"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError(
            "attentional pooling (attn_pool) is not supported: the pooled output is not a "
            "residual-stream row"
        )
    if visual.pool_type != "tok":
        raise UnsupportedModelError(
            f"pool_type={visual.pool_type!r} is not supported; only CLS-token pooling ('tok')"
        )
    if visual.proj is None:
        raise UnsupportedModelError("visual.proj is None (pruned head); nothing to project onto")
    for name in ("ln_pre", "ln_post"):
        mod = getattr(visual, name)
        if not isinstance(mod, nn.LayerNorm | nn.Identity):
            raise UnsupportedModelError(f"visual.{name} is {type(mod).__name__}, not a LayerNorm")
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise UnsupportedModelError("visual.ln_post must be a LayerNorm")
    for i, blk in enumerate(visual.transformer.resblocks):
        where = f"visual.transformer.resblocks[{i}]"
        if type(blk) is not ResidualAttentionBlock:
            raise UnsupportedModelError(
                f"{where} is {type(blk).__name__}; only the default ResidualAttentionBlock is "
                "supported (no qk-norm / scaled cosine attention / custom blocks)"
            )
        if hasattr(blk, "ln_1_kv"):
            raise UnsupportedModelError(f"{where} is a cross-attention block")
        attn = blk.attn
        if (
            not isinstance(attn, nn.MultiheadAttention)
            or not attn._qkv_same_embed_dim
            or attn.bias_k is not None
            or attn.add_zero_attn
        ):
            raise UnsupportedModelError(
                f"{where}.attn must be a plain nn.MultiheadAttention with packed in_proj, no "
                "bias_k/bias_v and no add_zero_attn"
            )
        for name in ("ln_1", "ln_2"):
            if not isinstance(getattr(blk, name), nn.LayerNorm):
                raise UnsupportedModelError(f"{where}.{name} is not a LayerNorm")
        for name in ("ls_1", "ls_2"):
            if not isinstance(getattr(blk, name), LayerScale | nn.Identity):
                raise UnsupportedModelError(f"{where}.{name} is neither LayerScale nor Identity")
        if list(dict(blk.mlp.named_children())) != ["c_fc", "gelu", "c_proj"]:
            raise UnsupportedModelError(f"{where}.mlp is not Sequential(c_fc, gelu, c_proj)")
    return visual


# ----------------------------------------------------------------------------- kernels


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _layer_norm(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(mod, nn.Identity):
        return x
    return F.layer_norm(
        x, mod.normalized_shape, _cast(mod.weight, x.dtype), _cast(mod.bias, x.dtype), mod.eps
    )


def _layer_scale(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gamma = getattr(mod, "gamma", None)
    return x if gamma is None else x * gamma.to(x.dtype)


def _attention(
    attn: nn.MultiheadAttention, u: torch.Tensor, cls_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention of ``nn.MultiheadAttention`` on ``u`` [B, T, W] (no mask, eval).

    Returns ``(out, z, q, k, v)``: ``out`` the module output ([B, T, W], or [B, 1, W] for the
    CLS query only when ``cls_only``); ``z`` [B, H, d_h] the per-head attention outputs of the
    CLS query before the out-projection (Σ_j A_{0j} v_j); ``q`` [B, H, T_q, d_h], ``k``, ``v``
    [B, H, T, d_h] (biases included).
    """
    b, t, w = u.shape
    n_heads = attn.num_heads
    dh = w // n_heads
    w_in = attn.in_proj_weight.to(u.dtype)
    b_in = _cast(attn.in_proj_bias, u.dtype)
    if cls_only:
        q = F.linear(u[:, :1], w_in[:w], None if b_in is None else b_in[:w]).view(b, 1, n_heads, dh)
        kv = F.linear(u, w_in[w:], None if b_in is None else b_in[w:]).view(b, t, 2, n_heads, dh)
        k, v = kv.unbind(2)
    else:
        q, k, v = F.linear(u, w_in, b_in).view(b, t, 3, n_heads, dh).unbind(2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v)  # [B, H, T_q, d_h]
    z = o[:, :, 0]
    o = o.transpose(1, 2).reshape(b, o.shape[2], w)
    out = F.linear(o, attn.out_proj.weight.to(u.dtype), _cast(attn.out_proj.bias, u.dtype))
    return out, z, q, k, v


def _head_terms(attn: nn.MultiheadAttention, z: torch.Tensor) -> torch.Tensor:
    """h_{l,h} = z_h · O^h + b_O/H for the CLS row: [B, H, d_h] -> [B, H, W]."""
    w_out = attn.out_proj.weight.to(z.dtype)  # [W_out, W_in]; O^h = w_out[:, h*dh:(h+1)*dh]ᵀ
    n_heads, dh = z.shape[1], z.shape[2]
    terms = torch.einsum("bhd,whd->bhw", z, w_out.view(w_out.shape[0], n_heads, dh))
    if attn.out_proj.bias is not None:
        terms = terms + attn.out_proj.bias.to(z.dtype) / n_heads
    return terms


def _token_terms(
    attn: nn.MultiheadAttention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: Sequence[int],
) -> torch.Tensor:
    """h_{l,h,j} = A_{0j} v_j O^h + b_O/(T·H) for ``heads``: -> [B, len(heads), T, W]."""
    idx = list(heads)
    n_heads, t, dh = k.shape[1], k.shape[2], k.shape[3]
    q0 = q[:, idx, 0]  # [B, n, d_h]
    scores = torch.einsum("bnd,bntd->bnt", q0, k[:, idx]) / math.sqrt(dh)
    a = scores.softmax(-1)  # CLS row of the attention pattern
    w_out = attn.out_proj.weight.to(q.dtype).view(-1, n_heads, dh)[:, idx]  # [W, n, d_h]
    terms = torch.einsum("bnt,bntd,wnd->bntw", a, v[:, idx], w_out)
    if attn.out_proj.bias is not None:
        terms = terms + attn.out_proj.bias.to(q.dtype) / (t * n_heads)
    return terms


def _mlp(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fc, act, pj = blk.mlp.c_fc, blk.mlp.gelu, blk.mlp.c_proj
    h = act(F.linear(x, fc.weight.to(x.dtype), _cast(fc.bias, x.dtype)))
    return F.linear(h, pj.weight.to(x.dtype), _cast(pj.bias, x.dtype))


def _embed(visual: nn.Module, images: torch.Tensor, mixed: bool = False) -> torch.Tensor:
    """LN_pre([cls; patches] + pos): the start of the residual stream, [B, T, W].

    ``mixed``: only the patch convolution runs under the surrounding autocast; the sum with
    the class and position embeddings and LN_pre are float32."""
    conv = visual.conv1
    x = F.conv2d(
        images,
        conv.weight.to(images.dtype),
        _cast(conv.bias, images.dtype),
        stride=conv.stride,
        padding=conv.padding,
    )
    x = x.flatten(2).transpose(1, 2)  # [B, grid², W]
    if mixed:
        with _full_precision(x.device):
            return _embed_tokens(visual, x.float(), images.shape)
    return _embed_tokens(visual, x, images.shape)


def _embed_tokens(visual: nn.Module, x: torch.Tensor, image_shape: torch.Size) -> torch.Tensor:
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    pos = visual.positional_embedding
    if pos.shape[0] != x.shape[1]:
        raise ValueError(
            f"images of size {tuple(image_shape[-2:])} give {x.shape[1]} tokens but the model "
            f"has {pos.shape[0]} positional embeddings (image_size={visual.image_size}); "
            "use the model's preprocess transform"
        )
    x = x + pos.to(x.dtype)
    # patch_dropout: identity in eval mode, and the decomposition always uses eval semantics
    return _layer_norm(visual.ln_pre, x)


def _normalise_spatial(
    spatial_heads: Iterable[tuple[int, int]] | None, n_layers: int, n_heads: int
) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for item in spatial_heads or ():
        layer, head = (int(i) for i in item)
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"spatial head {(layer, head)} out of range: {n_layers} layers x {n_heads} heads"
            )
        if head not in by_layer.setdefault(layer, []):
            by_layer[layer].append(head)
    return by_layer


# ----------------------------------------------------------------------------- public API


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context of a ``precision`` (a no-op for float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, enabled=False)


def _prepare(
    model: nn.Module, images: torch.Tensor, dtype: torch.dtype, precision: str = "float32"
) -> tuple[nn.Module, torch.Tensor]:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype={dtype} not supported: the decomposition's parts and sums are float32 (or "
            "float64 for checks); for half-precision matmuls use precision='float16' or "
            "'bfloat16' (METHODS §1.6)"
        )
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if precision != "float32" and dtype != torch.float32:
        raise ValueError(f"precision={precision!r} needs dtype=torch.float32, got {dtype}")
    visual = get_vision_transformer(model)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a preprocessed [N, 3, S, S] tensor, got {images.shape}")
    if visual.training:
        log.warning("visual tower is in training mode; decompose uses eval semantics")
    device = visual.proj.device
    return visual, images.to(device=device, dtype=dtype)


@torch.inference_mode()
def residual_parts(
    model: nn.Module,
    images: torch.Tensor,
    *,
    spatial_heads: Iterable[tuple[int, int]] | None = None,
    dtype: torch.dtype = torch.float32,
    precision: str = "float32",
) -> ResidualParts:
    """Unprojected split of the final CLS residual (METHODS §1.2), one forward pass.

    Mostly useful for verification; :func:`decompose` is the function to use.
    """
    visual, x = _prepare(model, images, dtype, precision)
    with _autocast(x.device, precision):
        return _residual_parts(visual, x, spatial_heads, mixed=precision != "float32")


def _residual_parts(
    visual: nn.Module,
    images: torch.Tensor,
    spatial_heads: Iterable[tuple[int, int]] | None,
    mixed: bool = False,
) -> ResidualParts:
    """One pass over the blocks. ``mixed`` (inside an autocast context): the matmuls run in
    half precision, but the residual stream, the CLS-row head terms and every stored part
    stay float32: the CLS query's attention is recomputed in float32 from the half-precision
    q, k, v, and the CLS row of each attention update is the float32 sum of its head terms,
    so the parts still sum exactly (to float32 rounding) to the residual the pass used; the
    non-CLS rows and the MLPs carry the half-precision error into later layers."""
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    n_heads = blocks[0].attn.num_heads
    spatial_by_layer = _normalise_spatial(spatial_heads, n_layers, n_heads)

    x = _embed(visual, images, mixed)
    cls = x[:, 0].clone()
    heads, mlps = [], []
    spatial: dict[tuple[int, int], torch.Tensor] = {}
    for layer, blk in enumerate(blocks):
        last = layer == n_layers - 1
        u = _layer_norm(blk.ln_1, x)
        out, z, q, k, v = _attention(blk.attn, u, cls_only=last)
        if last:
            x = x[:, :1]  # only the CLS row feeds the output
        if mixed:
            with _full_precision(x.device):
                # the CLS query's attention again in float32 (from the half-precision q, k, v):
                # one query row, cheap next to the full attention, and consistent with the
                # float32 token-level terms
                q, k, v = q.float(), k.float(), v.float()
                z = F.scaled_dot_product_attention(q[:, :, :1], k, v)[:, :, 0]
                terms = _layer_scale(blk.ls_1, _head_terms(blk.attn, z))
                update = _layer_scale(blk.ls_1, out.float())
                update = torch.cat([terms.sum(1, keepdim=True), update[:, 1:]], dim=1)
            x = x + update
            heads.append(terms)
        else:
            x = x + _layer_scale(blk.ls_1, out)
            heads.append(_layer_scale(blk.ls_1, _head_terms(blk.attn, z)))
        if layer in spatial_by_layer:
            wanted = spatial_by_layer[layer]
            with _full_precision(x.device) if mixed else contextlib.nullcontext():
                terms = _layer_scale(blk.ls_1, _token_terms(blk.attn, q, k, v, wanted))
            for i, h in enumerate(wanted):
                spatial[(layer, h)] = terms[:, i]
        m = _layer_scale(blk.ls_2, _mlp(blk, _layer_norm(blk.ln_2, x)))
        if mixed:
            m = m.float()  # exactly the values added to the (float32) residual
        mlps.append(m[:, 0])
        x = x + m
    return ResidualParts(
        cls=cls,
        mlp=torch.stack(mlps, 1),
        heads=torch.stack(heads, 1),
        residual=x[:, 0],
        spatial=spatial,
    )


def decompose(
    model: nn.Module,
    images: torch.Tensor,
    *,
    spatial_heads: Iterable[tuple[int, int]] | None = None,
    centring: str = "shared",
    dtype: torch.dtype = torch.float32,
    precision: str = "float32",
) -> Decomposition:
    """Decompose the normalised image embeddings of ``images`` (METHODS §1).

    ``model``: an open_clip CLIP model (or its ``.visual``) with a ViT visual tower; it runs on
    its own device (CUDA when it is there) and is never modified. ``images``: a preprocessed
    [N, 3, S, S] batch (any device). ``spatial_heads``: (layer, head) pairs whose token-level
    terms are returned in ``.spatial``. ``centring``: ``"shared"`` (reference scheme, default)
    or ``"self"``. ``dtype``: compute dtype, float32 (default) or float64; outputs are CPU
    tensors of that dtype. Runs under ``torch.inference_mode()``.

    ``precision``: ``"float32"`` (default), or ``"float16"`` / ``"bfloat16"`` to run the
    patch embedding, attention and MLP matmuls under ``torch.autocast`` (mixed precision, for
    GPUs). The residual stream, every stored part, LN_post and the projection stay float32
    and the CLS row is updated with the float32 sum of its head terms, so Σ ĉ_k = ê still
    holds to float32 rounding for the embedding this pass computes; that embedding differs
    from the float32 one by the half-precision error (docs/DESIGN.md gives the measured
    tolerances). On CUDA the outputs are copied into pinned host memory without blocking
    per tensor.
    """
    if centring not in CENTRINGS:
        raise ValueError(f"centring must be one of {CENTRINGS}, got {centring!r}")
    with torch.inference_mode():
        visual, x = _prepare(model, images, dtype, precision)
        with _autocast(x.device, precision):
            parts = _residual_parts(visual, x, spatial_heads, mixed=precision != "float32")
        with _full_precision(x.device):
            dec = _project(visual, parts, centring)
    return _to_cpu(dec)


def _project(visual: nn.Module, parts: ResidualParts, centring: str) -> Decomposition:
    r = parts.residual
    dtype = r.dtype
    ln = visual.ln_post
    proj = visual.proj.to(dtype)  # [W, D]
    gamma = _cast(ln.weight, dtype)
    beta = _cast(ln.bias, dtype)
    gp = proj if gamma is None else gamma[:, None] * proj  # diag(γ)·P
    g1 = gp.sum(0)  # 1ᵀ·diag(γ)·P
    bp = torch.zeros_like(g1) if beta is None else beta @ proj

    e = _layer_norm(ln, r) @ proj  # what encode_image returns
    norm = e.norm(dim=-1)
    mu = r.mean(-1)
    sigma = torch.sqrt(r.var(-1, unbiased=False) + ln.eps)

    n_layers, n_heads = parts.heads.shape[1], parts.heads.shape[2]
    omega_block = 1.0 / (2 * n_layers + 1)
    scale = 1.0 / (sigma * norm)  # [B]

    def proj_part(c: torch.Tensor, omega: float) -> torch.Tensor:
        """ĉ for parts c [B, ..., W] that all carry share ω."""
        extra = (1,) * (c.ndim - 2)
        s = scale.view(-1, *extra, 1)
        out = (c @ gp) * s
        if centring == "shared":
            offset = (bp - (mu / sigma)[:, None] * g1) / norm[:, None]  # [B, D]
            return out + omega * offset.view(-1, *extra, offset.shape[-1])
        own_mean = c.mean(-1, keepdim=True)
        return out - own_mean * g1 * s + omega * bp / norm.view(-1, *extra, 1)

    t_tokens = {k: v.shape[1] for k, v in parts.spatial.items()}
    dec = Decomposition(
        cls=proj_part(parts.cls, omega_block),
        mlp=proj_part(parts.mlp, omega_block),
        heads=proj_part(parts.heads, omega_block / n_heads),
        embedding=e / norm[:, None],
        norm=norm,
        ln_mu=mu,
        ln_sigma=sigma,
        spatial={
            key: proj_part(val, omega_block / (n_heads * t_tokens[key]))
            for key, val in parts.spatial.items()
        },
        centring=centring,
    )
    return dec


def _to_cpu(dec: Decomposition) -> Decomposition:
    """Move to the CPU as ordinary tensors (inference tensors reject later in-place edits)."""

    cuda = []

    def cpu(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t.clone()
        if t.device.type == "cuda":  # pinned target: the copies queue up without blocking
            out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            out.copy_(t, non_blocking=True)
            cuda.append(t.device)
            return out
        return t.cpu()

    for name in ("cls", "mlp", "heads", "embedding", "norm", "ln_mu", "ln_sigma"):
        setattr(dec, name, cpu(getattr(dec, name)))
    dec.spatial = {k: cpu(v) for k, v in dec.spatial.items()}
    for device in set(cuda):
        torch.cuda.synchronize(device)  # the host buffers are complete before anyone reads
    return dec
