"""Cross Efficient ViT (Coccomini et al., 2022, arXiv 2107.02612): the teacher.

Two EfficientNet branches turn a face crop into one token each: the full network gives a
1280x7x7 map (one 7x7 "small" patch), the first blocks give a 24x56x56 map (one 56x56 "large"
patch). Each token gets a CLS token, its own transformer, and the two CLS tokens exchange
information through cross-attention. Each branch ends in a single-logit head; the logits are summed.

Only what `forward` uses is built: no ImageNet classifier heads, no unused tail of the second
backbone. That is why the parameter count here is below the paper's 101.4M (see README).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, FaceClassifier, hub_mixin_kwargs
from .trunk import EfficientNetTrunk


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


class FeedForward(nn.Sequential):
    def __init__(self, *, dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim), nn.Dropout(dropout),
        )


class Attention(nn.Module):
    """Multi-head attention; with `context`, queries come from x and keys/values from context."""

    def __init__(self, *, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.dropout = dropout

    def forward(self, x, context=None, kv_include_self: bool = False):
        context = x if context is None else context
        if kv_include_self:  # a CLS token attends to itself as well as to the other branch
            context = torch.cat((x, context), dim=1)
        b, n, _ = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Transformer(nn.Module):
    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(dim, Attention(dim=dim, heads=heads, dim_head=dim_head, dropout=dropout)),
                PreNorm(dim, FeedForward(dim=dim, hidden_dim=mlp_dim, dropout=dropout)),
            ])
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class ProjectInOut(nn.Module):
    """Runs `fn` in another token width: a CLS token visits the other branch's space."""

    def __init__(self, dim_in: int, dim_out: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.project_in = nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()
        self.project_out = nn.Linear(dim_out, dim_in) if dim_in != dim_out else nn.Identity()

    def forward(self, x, *args, **kwargs):
        return self.project_out(self.fn(self.project_in(x), *args, **kwargs))


class CrossTransformer(nn.Module):
    """Each branch's CLS token attends to the other branch's patch tokens."""

    def __init__(self, *, sm_dim: int, lg_dim: int, depth: int, heads: int, dim_head: int,
                 dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                ProjectInOut(sm_dim, lg_dim, PreNorm(lg_dim, Attention(
                    dim=lg_dim, heads=heads, dim_head=dim_head, dropout=dropout))),
                ProjectInOut(lg_dim, sm_dim, PreNorm(sm_dim, Attention(
                    dim=sm_dim, heads=heads, dim_head=dim_head, dropout=dropout))),
            ])
            for _ in range(depth)
        )

    def forward(self, sm_tokens, lg_tokens):
        sm_cls, sm_patches = sm_tokens[:, :1], sm_tokens[:, 1:]
        lg_cls, lg_patches = lg_tokens[:, :1], lg_tokens[:, 1:]
        for sm_attend_lg, lg_attend_sm in self.layers:
            sm_cls = sm_attend_lg(sm_cls, context=lg_patches, kv_include_self=True) + sm_cls
            lg_cls = lg_attend_sm(lg_cls, context=sm_patches, kv_include_self=True) + lg_cls
        return torch.cat((sm_cls, sm_patches), dim=1), torch.cat((lg_cls, lg_patches), dim=1)


class MultiScaleEncoder(nn.Module):
    def __init__(self, *, depth: int, sm_dim: int, lg_dim: int, sm_enc: dict, lg_enc: dict,
                 cross_attn_depth: int, cross_attn_heads: int, cross_attn_dim_head: int,
                 dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Transformer(dim=sm_dim, dropout=dropout, **sm_enc),
                Transformer(dim=lg_dim, dropout=dropout, **lg_enc),
                CrossTransformer(sm_dim=sm_dim, lg_dim=lg_dim, depth=cross_attn_depth,
                                 heads=cross_attn_heads, dim_head=cross_attn_dim_head,
                                 dropout=dropout),
            ])
            for _ in range(depth)
        )

    def forward(self, sm_tokens, lg_tokens):
        for sm_enc, lg_enc, cross in self.layers:
            sm_tokens, lg_tokens = cross(sm_enc(sm_tokens), lg_enc(lg_tokens))
        return sm_tokens, lg_tokens


class ImageEmbedder(nn.Module):
    """Backbone feature map -> patch tokens (+ CLS token, position embedding)."""

    def __init__(self, *, trunk: EfficientNetTrunk, map_size: int, patch_size: int, dim: int,
                 dropout: float):
        super().__init__()
        if map_size % patch_size:
            raise ValueError(f"a {map_size}x{map_size} feature map does not split into whole "
                             f"{patch_size}x{patch_size} patches")
        self.trunk = trunk
        channels = trunk.out_channels
        self.channels, self.map_size, self.patch_size = channels, map_size, patch_size
        num_patches = (map_size // patch_size) ** 2
        self.to_patch_embedding = nn.Linear(channels * patch_size**2, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = nn.Dropout(dropout)

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        if fmap.shape[-1] != self.map_size:  # from a lower training resolution (FixRes-style)
            fmap = F.interpolate(fmap, size=(self.map_size, self.map_size), mode="bilinear",
                                 align_corners=False)
        b, c, h, w = fmap.shape
        if (c, h, w) != (self.channels, self.map_size, self.map_size):
            raise ValueError(f"expected maps [N, {self.channels}, {self.map_size}, "
                             f"{self.map_size}], got {tuple(fmap.shape)}")
        p = self.patch_size
        # b c (h p1) (w p2) -> b (h w) (p1 p2 c), the reference's patch layout
        patches = fmap.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        x = self.to_patch_embedding(patches.reshape(b, (h // p) * (w // p), p * p * c))
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self.pos_embedding
        return self.dropout(x)

    def forward(self, img):
        return self.tokens(self.trunk(img))


class CrossEfficientViT(FaceClassifier, **hub_mixin_kwargs("cross-efficient-vit")):
    """The paper's configuration by default (configs/architecture.yaml of the reference)."""

    derived_keys = ("sm_channels", "lg_channels")

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_b0",
        image_size: int = 224,
        depth: int = 4,
        sm_dim: int = 192,
        sm_patch_size: int = 7,
        sm_enc_depth: int = 2,
        sm_enc_heads: int = 8,
        sm_enc_dim_head: int = 64,
        sm_enc_mlp_dim: int = 2048,
        lg_dim: int = 384,
        lg_stages: int = 2,
        lg_patch_size: int = 56,
        lg_enc_depth: int = 3,
        lg_enc_heads: int = 8,
        lg_enc_dim_head: int = 64,
        lg_enc_mlp_dim: int = 2048,
        cross_attn_depth: int = 2,
        cross_attn_heads: int = 8,
        cross_attn_dim_head: int = 64,
        dropout: float = 0.15,
        emb_dropout: float = 0.15,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__(input_size=image_size, mean=mean, std=std)
        self.sm_embedder = ImageEmbedder(
            trunk=EfficientNetTrunk(backbone=backbone, num_stages=None),
            map_size=image_size // 32, patch_size=sm_patch_size, dim=sm_dim, dropout=emb_dropout)
        self.lg_embedder = ImageEmbedder(
            trunk=EfficientNetTrunk(backbone=backbone, num_stages=lg_stages),
            map_size=image_size // 4, patch_size=lg_patch_size, dim=lg_dim, dropout=emb_dropout)
        self.encoder = MultiScaleEncoder(
            depth=depth, sm_dim=sm_dim, lg_dim=lg_dim,
            sm_enc=dict(depth=sm_enc_depth, heads=sm_enc_heads, dim_head=sm_enc_dim_head,
                        mlp_dim=sm_enc_mlp_dim),
            lg_enc=dict(depth=lg_enc_depth, heads=lg_enc_heads, dim_head=lg_enc_dim_head,
                        mlp_dim=lg_enc_mlp_dim),
            cross_attn_depth=cross_attn_depth, cross_attn_heads=cross_attn_heads,
            cross_attn_dim_head=cross_attn_dim_head, dropout=dropout)
        self.sm_head = nn.Sequential(nn.LayerNorm(sm_dim), nn.Linear(sm_dim, 1))
        self.lg_head = nn.Sequential(nn.LayerNorm(lg_dim), nn.Linear(lg_dim, 1))
        for head in (self.sm_head, self.lg_head):  # start at p=0.5 rather than a random guess
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def trunks(self) -> tuple[EfficientNetTrunk, ...]:
        """The backbones whose maps `forward_from_features` takes, in its argument order."""
        return self.sm_embedder.trunk, self.lg_embedder.trunk

    def derived_config(self) -> dict:
        """Channel counts older configs stored; they come from the trunks now."""
        return {"sm_channels": self.sm_embedder.channels, "lg_channels": self.lg_embedder.channels}

    def forward_from_features(self, sm_map: torch.Tensor, lg_map: torch.Tensor) -> torch.Tensor:
        """Logits from the two backbone maps; lets training run frozen backbone parts once."""
        sm, lg = self.encoder(self.sm_embedder.tokens(sm_map), self.lg_embedder.tokens(lg_map))
        return (self.sm_head(sm[:, 0]) + self.lg_head(lg[:, 0])).squeeze(-1)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Both branches' CLS tokens after their heads' LayerNorm, side by side
        [N, sm_dim + lg_dim]: each head is a linear map of its half."""
        self.check_input(x)
        sm, lg = self.encoder(self.sm_embedder(x), self.lg_embedder(x))
        return torch.cat((self.sm_head[0](sm[:, 0]), self.lg_head[0](lg[:, 0])), dim=-1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        sm_dim = self.sm_head[0].normalized_shape[0]
        assert features.shape[-1] == sm_dim + self.lg_head[0].normalized_shape[0], features.shape
        return (self.sm_head[1](features[:, :sm_dim])
                + self.lg_head[1](features[:, sm_dim:])).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_from_features(self.sm_embedder.trunk(x), self.lg_embedder.trunk(x))
