"""genair's sampler filters give the logits and the distribution HF `generate` samples from.

The plain implementation is transformers' own: RepetitionPenaltyLogitsProcessor →
TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper, each a full-vocabulary pass with a
full sort for top-p, which is what the paper's code ran.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from genair_core.llm.engines.sampling import penalize_seen, top_k_top_p

VOCAB = 4096


def hf_filter(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    penalty: float,
    temperature: float,
    k: int,
    p: float,
) -> torch.Tensor:
    """The reference chain on (rows, V) logits; `seen` (rows, L) are the tokens seen per row."""
    x = RepetitionPenaltyLogitsProcessor(penalty)(seen, logits.clone())
    x = TemperatureLogitsWarper(temperature)(seen, x)
    if k:
        x = TopKLogitsWarper(k)(seen, x)
    return TopPLogitsWarper(p)(seen, x)


def genair_filter(
    logits: torch.Tensor,
    seen: torch.Tensor,
    *,
    penalty: float,
    temperature: float,
    k: int,
    p: float,
) -> torch.Tensor:
    n_rows, width = seen.shape
    x = penalize_seen(
        logits.clone(),
        torch.arange(n_rows).repeat_interleave(width),
        seen.reshape(-1),
        torch.full((n_rows * width,), penalty),
    )
    x = x / temperature
    return top_k_top_p(x, torch.full((n_rows,), k), torch.full((n_rows,), p))


def model_like_logits(n_rows: int, seed: int, spread: float = 4.0) -> torch.Tensor:
    """Heavy-tailed logits: a few strong tokens over a flat tail, as a language model gives."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_rows, VOCAB, generator=g)
    logits += spread * torch.rand(n_rows, 1, generator=g) * torch.randn(n_rows, VOCAB, generator=g)
    return logits


def seen_tokens(n_rows: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Repeats included (width > the distinct tokens drawn from): a token is penalised once.
    return torch.randint(0, VOCAB // 8, (n_rows, width), generator=g)


@pytest.mark.parametrize("k", [50, 0])
@pytest.mark.parametrize("spread", [4.0, 0.5])  # 0.5: nuclei wider than the 256 candidates
def test_filtered_logits_equal_transformers(k: int, spread: float) -> None:
    logits = model_like_logits(128, seed=1, spread=spread)
    seen = seen_tokens(128, 200, seed=2)
    settings = {"penalty": 1.2, "temperature": 0.6, "k": k, "p": 0.9}
    expected = hf_filter(logits, seen, **settings)
    got = genair_filter(logits, seen, **settings)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got, expected)
    kept = (~torch.isinf(got)).sum(1)
    if spread == 0.5 and k == 0:
        assert int(kept.min()) > 256  # the full-sort fallback was exercised


def test_penalty_touches_only_seen_tokens_once() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.0, 3.0]])
    rows = torch.tensor([0, 0, 0, 0])
    tokens = torch.tensor([0, 1, 0, 3])  # token 0 twice: penalised once
    out = penalize_seen(logits.clone(), rows, tokens, torch.full((4,), 2.0))
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.0, 3.0]]


def test_inactive_rows_untouched_and_mixed_rows() -> None:
    logits = model_like_logits(3, seed=3)
    out = top_k_top_p(logits.clone(), torch.tensor([0, 5, 0]), torch.tensor([1.0, 1.0, 0.5]))
    assert torch.equal(out[0], logits[0])
    assert int((~torch.isinf(out[1])).sum()) == 5
    assert torch.equal(out[1], TopKLogitsWarper(5)(None, logits[1:2].clone())[0])
    assert torch.equal(out[2], TopPLogitsWarper(0.5)(None, logits[2:3].clone())[0])


def test_top_k_ties_at_kth_value_are_kept() -> None:
    logits = torch.tensor([[5.0, 4.0, 3.0, 3.0, 1.0]])
    out = top_k_top_p(logits.clone(), torch.tensor([3]), torch.tensor([1.0]))
    assert out.tolist() == [[5.0, 4.0, 3.0, 3.0, float("-inf")]]


@pytest.mark.parametrize("k", [50, 0])
def test_vllm_sampler_with_processors_draws_the_reference_distribution(k: int) -> None:
    """vLLM's own Sampler (temperature only) + the two processors, many seeded draws of one row,
    against the exact distribution the transformers chain gives (chi-square)."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.sampler import Sampler

    from genair_core.llm.engines.vllm_sampling import (
        SeenTokenPenalty,
        TopKTopP,
        sampling_extra_args,
    )

    n_rows, draws = 2048, 24
    logits = model_like_logits(1, seed=5, spread=2.0)
    prompt, output = list(range(40)), [7, 9, 7]
    params = SamplingParams(temperature=0.6, extra_args=sampling_extra_args(k, 0.9, 1.2))
    procs = [SeenTokenPenalty(None, torch.device("cpu"), False), TopKTopP(None, "cpu", False)]
    added = [(i, params, prompt, output) for i in range(n_rows)]
    for proc in procs:
        proc.update_state(BatchUpdate(batch_size=n_rows, removed=[], added=added, moved=[]))
    metadata = SamplingMetadata(
        temperature=torch.full((n_rows,), 0.6),
        all_greedy=False,
        all_random=True,
        top_p=None,
        top_k=None,
        generators={},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(n_rows),
        presence_penalties=torch.zeros(n_rows),
        repetition_penalties=torch.ones(n_rows),
        output_token_ids=[output] * n_rows,
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(procs),
    )
    sampler = Sampler()
    torch.manual_seed(0)
    counts = torch.zeros(VOCAB)
    for _ in range(draws):
        sampled = sampler(logits.expand(n_rows, VOCAB).clone(), metadata).sampled_token_ids
        counts += torch.bincount(sampled.view(-1).long(), minlength=VOCAB)

    seen = torch.tensor([prompt + output])
    settings = {"penalty": 1.2, "temperature": 0.6, "k": k, "p": 0.9}
    probs = hf_filter(logits, seen, **settings).softmax(-1)[0].double()
    support = probs > 0
    assert int(counts[~support].sum()) == 0  # nothing outside the nucleus is ever drawn
    expected = probs[support] * counts.sum()
    assert int(support.sum()) > 10
    big = expected >= 5  # pool the rare tokens into one chi-square cell
    observed = torch.cat([counts[support][big], counts[support][~big].sum().view(1)]).double()
    pooled = torch.cat([expected[big], expected[~big].sum().view(1)])
    keep = pooled > 0
    observed, pooled = observed[keep], pooled[keep]
    pooled *= observed.sum() / pooled.sum()  # float rounding of the total only
    assert chisquare(observed.numpy(), pooled.numpy()).pvalue > 1e-3


def test_processors_follow_vllm_batch_moves_and_new_output_tokens() -> None:
    """Rows move as vLLM condenses its batch; each keeps its own seen tokens and settings."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.sample.logits_processor.interface import MoveDirectionality

    from genair_core.llm.engines.vllm_sampling import (
        SeenTokenPenalty,
        TopKTopP,
        sampling_extra_args,
    )

    def penalised(proc: SeenTokenPenalty, n_rows: int) -> list[set[int]]:
        out = proc.apply(torch.ones(n_rows, 16))
        return [set((out[r] != 1).nonzero().view(-1).tolist()) for r in range(n_rows)]

    strong = SamplingParams(extra_args=sampling_extra_args(2, 1.0, 2.0))
    plain = SamplingParams()  # no genair settings: left alone
    penalty = SeenTokenPenalty(None, torch.device("cpu"), False)
    top = TopKTopP(None, torch.device("cpu"), False)
    out0, out2 = [5], []
    added = [(0, strong, [1, 2], out0), (1, plain, [3], []), (2, strong, [4], out2)]
    for proc in (penalty, top):
        proc.update_state(BatchUpdate(batch_size=3, removed=[], added=added, moved=[]))
    assert penalised(penalty, 3) == [{1, 2, 5}, set(), {4}]
    out2 += [6, 7]  # vLLM appends sampled tokens to the live output lists
    assert penalised(penalty, 3) == [{1, 2, 5}, set(), {4, 6, 7}]

    # Request 0 finishes; vLLM moves row 2 into row 0.
    moved = [(2, 0, MoveDirectionality.UNIDIRECTIONAL)]
    for proc in (penalty, top):
        proc.update_state(BatchUpdate(batch_size=2, removed=[0], added=[], moved=moved))
    assert penalised(penalty, 2) == [{4, 6, 7}, set()]
    kept = (~torch.isinf(top.apply(torch.arange(16.0).expand(2, 16).clone()))).sum(1)
    assert kept.tolist() == [2, 16]

    swap = [(0, 1, MoveDirectionality.SWAP)]
    for proc in (penalty, top):
        proc.update_state(BatchUpdate(batch_size=2, removed=[], added=[], moved=swap))
    assert penalised(penalty, 2) == [set(), {4, 6, 7}]
    kept = (~torch.isinf(top.apply(torch.arange(16.0).expand(2, 16).clone()))).sum(1)
    assert kept.tolist() == [16, 2]
