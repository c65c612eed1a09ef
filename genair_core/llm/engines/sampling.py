"""The archetype sampler's filters, without a full sort of the vocabulary or dense count tables.

HF `generate` and vLLM apply, in this order: repetition penalty over every token seen so far
(prompt included) → temperature → top-k → top-p → a draw from the softmax of what is left. Both
implement top-p by sorting all V logits of every row (V = 49,152 for SmolLM2); vLLM's CPU sampler
does so on every decode step, and builds two (rows × V) count tables for the penalty. The two
functions here give the same logits with less work:

    penalize_seen(logits, rows, tokens, penalty)   gathers and scatters only the seen tokens
    top_k_top_p(logits, top_k, top_p)              a partial sort (torch.topk) of the largest
                                                   candidates; exact (see below)

Exactness of top_p without a full sort: a token is kept when the probability mass of the tokens
ranked above it is below p (HF's and vLLM's rule: drop the tail whose mass is ≤ 1 - p, keep at
least one). If the top C candidates already hold a mass ≥ p, every token outside them has at
least that mass above it and is dropped, so the candidates decide the row alone. A row whose
candidates hold less (a flat distribution) is filtered again with a full sort. With top_k set,
top_p only ever looks at the top_k tokens (top-k has already set the rest to -inf), so C = top_k
needs no fallback.

genair_core.llm.engines.vllm_sampling wraps these as vLLM V1 logits processors.
"""

from __future__ import annotations

import torch

# Candidates looked at when top_k is off; a row whose nucleus is wider is cut again with a full
# sort (exact either way; the width only trades the partial sort against fallbacks).
DEFAULT_CANDIDATES = 256


def penalize_seen(
    logits: torch.Tensor, rows: torch.Tensor, tokens: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """CTRL repetition penalty, in place: logit / penalty where > 0, logit · penalty otherwise.

    `rows[i]`, `tokens[i]`, `penalty[i]` say that token `tokens[i]` was seen by row `rows[i]`
    (whose penalty is `penalty[i]`). A pair may appear more than once: every copy reads the same
    original logit and writes the same result, so a token is penalised once, as with a set.
    """
    flat = logits.view(-1)
    index = rows * logits.shape[1] + tokens
    seen = flat[index]
    flat[index] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    candidates: int = DEFAULT_CANDIDATES,
) -> torch.Tensor:
    """Set every logit outside a row's top-k, then outside its top-p nucleus, to -inf, in place.

    `logits` are (rows, V) after temperature; `top_k` (rows,) int, 0 = off; `top_p` (rows,)
    float in (0, 1], 1 = off. Rows with both off are left as they are. Ties at the k-th value
    are all kept, as in HF's TopKLogitsWarper.
    """
    vocab = logits.shape[1]
    k = torch.where((top_k <= 0) | (top_k >= vocab), vocab, top_k).long()
    active = (k < vocab) | (top_p < 1)
    if not bool(active.any()):
        return logits
    rows = active.nonzero().squeeze(1)
    x = logits[rows]
    k, p = k[rows], top_p[rows].to(x.dtype)
    has_k = k < vocab
    width = min(vocab, max(candidates, int(k[has_k].max()) if bool(has_k.any()) else 0))
    values, index = x.topk(width, dim=-1)  # descending
    kth = values.gather(1, (k.clamp(max=width) - 1).unsqueeze(1))
    values = values.masked_fill(values < kth, float("-inf"))
    # Normaliser: over the row's top-k when top-k is on (exactly the tokens the candidates
    # hold), else over the whole vocabulary.
    lse = torch.where(has_k, values.logsumexp(-1), x.logsumexp(-1)).unsqueeze(1)
    probs = (values - lse).exp()
    cum = probs.cumsum(-1)
    keep = (cum - probs) < p.unsqueeze(1)
    decided = has_k | (cum[:, -1] >= p) | (width == vocab)
    filtered = torch.full_like(x, float("-inf"))
    filtered.scatter_(1, index, values.masked_fill(~keep, float("-inf")))
    if not bool(decided.all()):
        undecided = (~decided).nonzero().squeeze(1)
        filtered[undecided] = _top_p_full_sort(x[undecided], p[undecided])
    logits[rows] = filtered
    return logits


def _top_p_full_sort(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    # The same rule over a full sort (rows whose nucleus is wider than the candidates).
    values, index = x.sort(dim=-1, descending=True)
    probs = values.softmax(-1)
    cum = probs.cumsum(-1)
    keep = (cum - probs) < p.unsqueeze(1)
    out = torch.full_like(x, float("-inf"))
    return out.scatter_(1, index, values.masked_fill(~keep, float("-inf")))
