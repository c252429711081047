"""Prompt learning on a frozen CLIP text tower (the CoOp family: DualCoOp, SCPNet).

Spec: ``specs/methods_wave3_clip.md`` 1.3 (the prompt-learning text path) and 2.1; fixture Y11.

- :func:`tokenize`: CLIP's BPE token ids ``[N, 77]`` (SOT 49406, the text, EOT 49407, zero
  padding), from open_clip's tokenizer, which ships its vocabulary (no network). The EOT id is the
  largest id of a row: its position is the row's argmax.
- :class:`ContextPrompts`: the prompt of class c is the token sequence of "X X ... X <name>."
  (n placeholders; ``_`` in a name becomes a space), embedded with CLIP's token embedding, with the
  n placeholder embeddings (positions 1..n) replaced by learned context vectors: one set shared by
  all classes, or one per class (``csc``). The SOT prefix and the name / "." / EOT / padding suffix
  are fixed buffers. Initialisation N(0, 0.02^2) from the global generator, or the token embeddings
  of given words (then n is their number).
- :class:`PromptTextEncoder`: CLIP's text tower on such embeddings: + positional embedding ->
  transformer (with CLIP's causal mask) -> final LayerNorm -> the row at the EOT position ->
  text projection. With the token embeddings of the ids it is ``encode_text``.

The CLIP modules are the run's own (``TaskSpec.clip``), frozen; only the context vectors train.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

CONTEXT_LENGTH = 77
PLACEHOLDER = "X"


def tokenize(texts: list[str], context_length: int = CONTEXT_LENGTH) -> Tensor:
    """CLIP BPE ids [N, context_length] (long), as OpenAI's ``clip.tokenize`` gives them."""
    import open_clip

    return open_clip.tokenize(list(texts), context_length=context_length)


def class_prompts(prefix: str, class_names: list[str]) -> list[str]:
    """"<prefix> <name>." per class, ``_`` in a name replaced by a space."""
    return [f"{prefix} {name.replace('_', ' ')}." for name in class_names]


def _embed(clip: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return clip.token_embedding(ids.to(clip.token_embedding.weight.device)).float().cpu()


class ContextPrompts(nn.Module):
    """Learned context vectors ``ctx`` [n, d] (or [C, n, d] with ``csc``) in front of each class name;
    ``forward()`` gives the prompt embeddings [C, 77, d], ``token_ids`` [C, 77] their ids."""

    def __init__(self, clip: nn.Module, class_names: list[str], n_ctx: int = 16, csc: bool = False,
                 init_words: str | None = None):
        super().__init__()
        words = " ".join(init_words.replace("_", " ").split()) if init_words else ""
        n_ctx = len(words.split(" ")) if words else n_ctx
        prefix = words or " ".join([PLACEHOLDER] * n_ctx)
        ids = tokenize(class_prompts(prefix, class_names))
        embedded = _embed(clip, ids)                                  # [C, 77, d]
        count, width = len(class_names), embedded.shape[-1]
        if words:
            ctx = _embed(clip, tokenize([words]))[0, 1:1 + n_ctx].clone()
            ctx = ctx.unsqueeze(0).repeat(count, 1, 1) if csc else ctx
        else:
            ctx = torch.empty((count, n_ctx, width) if csc else (n_ctx, width))
            nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx, self.csc, self.num_classes = n_ctx, csc, count
        self.register_buffer("token_prefix", embedded[:, :1].clone())
        self.register_buffer("token_suffix", embedded[:, 1 + n_ctx:].clone())
        self.register_buffer("token_ids", ids)

    def forward(self) -> Tensor:
        ctx = self.ctx if self.csc else self.ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        return torch.cat([self.token_prefix.to(ctx.dtype), ctx, self.token_suffix.to(ctx.dtype)], dim=1)


class PromptTextEncoder(nn.Module):
    """CLIP's text tower on token embeddings ``[N, 77, d]`` with their ids ``[N, 77]`` -> ``[N, D]``."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.positional_embedding = clip.positional_embedding
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, embeddings: Tensor, token_ids: Tensor) -> Tensor:
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), token_ids.argmax(dim=-1)]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection
