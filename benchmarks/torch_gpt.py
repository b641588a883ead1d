"""The default GPT (configs/lm/gpt.py) in PyTorch, for benchmarks/train_step.py only.

Same architecture, initialization scale, optimizer and batch as jaxlab's: token embedding
(normal, std 0.02) tied to the head, per block RMSNorm → attention with rotary positions
(rotate-half layout) → residual, RMSNorm → SwiGLU → residual, final RMSNorm; LeCun-normal
linear weights without biases; AdamW with decay on matrices only, global-norm clipping.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.scale, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def lecun_linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out, bias=False)
    # LeCun normal is a truncated normal with std 1/sqrt(fan_in), as flax initializes Dense.
    nn.init.trunc_normal_(layer.weight, std=1 / math.sqrt(fan_in) / 0.87962566103423978,
                          a=-2 / math.sqrt(fan_in) / 0.87962566103423978,
                          b=2 / math.sqrt(fan_in) / 0.87962566103423978)
    return layer


def rope(x, base: float = 10000.0):
    """x [b, h, t, d] rotated by position (pairs i, i + d/2)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * inv
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = RMSNorm(width), RMSNorm(width)
        self.q, self.k, self.v, self.o = (lecun_linear(width, width) for _ in range(4))
        self.gate, self.up = lecun_linear(width, hidden), lecun_linear(width, hidden)
        self.down = lecun_linear(hidden, width)

    def forward(self, x):
        b, t, w = x.shape
        h = self.norm1(x)
        split = lambda y: y.view(b, t, self.heads, w // self.heads).transpose(1, 2)
        q, k, v = rope(split(self.q(h))), rope(split(self.k(h))), split(self.v(h))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, w))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class GPT(nn.Module):
    def __init__(self, vocab: int, width: int, depth: int, heads: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, hidden) for _ in range(depth))
        self.norm = RMSNorm(width)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T


def make_optimizer(model: nn.Module, lr: float, weight_decay: float):
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    vectors = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": matrices, "weight_decay": weight_decay},
                              {"params": vectors, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


def make_step(model: nn.Module, optimizer, clip_norm: float):
    def step(inputs, targets):
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        return loss
    return step
