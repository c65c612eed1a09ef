"""Archetype engines: span pooling by hand on a tiny random Llama, the sampler, the registry, and
one run of the real default model through vLLM on the CPU, checked against transformers."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RepetitionPenaltyLogitsProcessor,
    TopPLogitsWarper,
)

from genair_core.config import LlmConfig
from genair_core.data.datasets import MovieLens100K
from genair_core.environment import SOCKET_FOLDER_PREFIX, SOCKET_PATH_MAX, socket_parent
from genair_core.llm.engines import (
    ENGINES,
    HFEngine,
    engine_options,
    generation_settings,
    make_engine,
)
from genair_core.llm.engines.base import completion_span, request_seed
from genair_core.llm.engines.hf_engine import _RepetitionPenalty, _SeededGumbel, _TemperatureTopP
from genair_core.llm.prompts import build_prompt
from storage.datasets import ML100K_ITEM_MEMBER
from storage.sources import read_recbole_atomic

EOS = 2
PAD = 0
FP32 = generation_settings(LlmConfig(dtype="float32", max_new_tokens=12, seed=3))


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<s>": 1, "</s>": EOS} | {f"w{i}": i for i in range(3, 40)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )


def by_hand(model: LlamaForCausalLM, prompt: list[int], completion: list[int]) -> tuple:
    """One row alone, no padding: the post-norm last layer, averaged over the two spans."""
    n_gen = completion.index(EOS) + 1 if EOS in completion else len(completion)
    ids = torch.tensor([prompt + completion[:n_gen]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    hidden = out.hidden_states[-1][0].double().numpy()  # (T, H), after the final norm
    return hidden[: len(prompt)].mean(0), hidden[len(prompt) : len(prompt) + n_gen].mean(0)


def test_span_pooling_matches_per_row_computation(tiny_llama: LlamaForCausalLM) -> None:
    engine = HFEngine(None, FP32, model=tiny_llama, batch_size=3, device="cpu")
    prompts = [[1, 5, 6], [1, 7, 8, 9, 10, 11, 12], [1, 13, 14, 15, 16]]
    completions = [
        [20, 21, EOS, 30, 31],  # tokens after EOS: excluded
        [22, 23, 24],  # no EOS (max length): all three
        [EOS],  # EOS at once: the EOS state alone
    ]
    got = engine.embed(prompts, completions)
    assert len(got) == 3
    for (input_emb, gen_emb), p, c in zip(got, prompts, completions, strict=True):
        want_input, want_gen = by_hand(tiny_llama, p, c)
        assert input_emb.dtype == np.float32
        assert input_emb.shape == (16,)
        np.testing.assert_allclose(input_emb, want_input, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gen_emb, want_gen, rtol=1e-5, atol=1e-6)


def test_tokens_after_eos_and_batch_shape_do_not_matter(tiny_llama: LlamaForCausalLM) -> None:
    prompts = [[1, 5, 6], [1, 7, 8, 9, 10, 11, 12]]
    batched = HFEngine(None, FP32, model=tiny_llama, batch_size=2, device="cpu")
    single = HFEngine(None, FP32, model=tiny_llama, batch_size=1, device="cpu")
    a = batched.embed(prompts, [[20, EOS, 30], [22, 23]])
    b = single.embed(prompts, [[20, EOS, 9, 9, 9, 9, 9], [22, 23]])
    for (ia, ga), (ib, gb) in zip(a, b, strict=True):
        np.testing.assert_allclose(ia, ib, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-6)


def test_embed_rejects_empty_spans_and_mismatched_rows(tiny_llama: LlamaForCausalLM) -> None:
    engine = HFEngine(None, FP32, model=tiny_llama, device="cpu")
    with pytest.raises(ValueError, match="row 1: empty completion"):
        engine.embed([[1, 5], [1, 6]], [[7], []])
    with pytest.raises(ValueError, match="pair up"):
        engine.embed([[1, 5]], [[7], [8]])


def test_completion_span() -> None:
    assert completion_span([5, 6, EOS, 7], frozenset({EOS})) == 3
    assert completion_span([5, 6], frozenset({EOS})) == 2
    assert completion_span([9, 5], frozenset({EOS, 9})) == 1


def test_hf_generate_is_seeded_per_prompt(
    tiny_llama: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    engine = HFEngine(
        None, FP32, model=tiny_llama, tokenizer=tiny_tokenizer, batch_size=4, device="cpu"
    )
    prompts = ["<s> w5 w6 w7", "<s> w8", "<s> w9 w10 w11 w12 w13 w14", "<s> w15 w16"]
    first = engine.generate(prompts)
    again = engine.generate(prompts[::-1])[::-1]  # other order, other padding per row
    alone = [engine.generate([p])[0] for p in prompts]
    for a, b, c, p in zip(first, again, alone, prompts, strict=True):
        assert a.prompt_token_ids == tuple(tiny_tokenizer(p)["input_ids"])
        assert a.completion_token_ids == b.completion_token_ids == c.completion_token_ids
        n = len(a.completion_token_ids)
        assert 1 <= n <= FP32.max_new_tokens
        assert a.finish_reason == ("stop" if a.completion_token_ids[-1] == EOS else "length")
        assert EOS not in a.completion_token_ids[:-1]
    other_seed = HFEngine(
        None,
        replace(FP32, seed=4),
        model=tiny_llama,
        tokenizer=tiny_tokenizer,
        device="cpu",
    ).generate(prompts)
    assert [c.completion_token_ids for c in other_seed] != [c.completion_token_ids for c in first]


def test_request_seed() -> None:
    assert request_seed(0, "a") == request_seed(0, "a")
    assert len({request_seed(0, "a"), request_seed(1, "a"), request_seed(0, "b")}) == 3
    assert 0 <= request_seed(123, "x" * 1000) < 2**31


def test_sampler_filters_match_transformers() -> None:
    torch.manual_seed(1)
    scores = torch.randn(3, 50) * 3
    input_ids = torch.randint(0, 50, (3, 7))
    np.testing.assert_allclose(
        _RepetitionPenalty(1.2)(input_ids, scores),
        RepetitionPenaltyLogitsProcessor(1.2)(input_ids, scores.clone()),
    )
    ours = _TemperatureTopP(0.6, 0.9)(input_ids, scores)
    theirs = TopPLogitsWarper(0.9)(input_ids, scores / 0.6)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-6)


def test_gumbel_max_samples_the_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]])
    draws = torch.stack(
        [
            _SeededGumbel([seed])(torch.zeros(1, 1, dtype=torch.long), logits).argmax(-1)
            for seed in range(4000)
        ]
    ).flatten()
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    want = torch.softmax(logits[0].double(), dim=0)
    assert freq[3] == 0  # a filtered token is never drawn
    np.testing.assert_allclose(freq.numpy(), want.numpy(), atol=0.03)


def test_registry_names_and_unknown_engine() -> None:
    assert set(ENGINES) == {"vllm", "transformers"}
    with pytest.raises(ValueError, match="valid engines: transformers, vllm"):
        make_engine("llamacpp", Path("."), FP32)


def test_settings_come_from_the_llm_section_and_are_validated() -> None:
    default = generation_settings(LlmConfig())
    assert (default.max_new_tokens, default.dtype, default.temperature) == (128, "bfloat16", 0.6)
    assert engine_options(LlmConfig()) == {"kv_cache_gib": 1.0}
    assert engine_options(LlmConfig(engine="transformers")) == {}
    with pytest.raises(ValueError, match="top_p"):
        replace(default, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        replace(default, max_new_tokens=0)


# ---- the real default model through the real vLLM CPU engine -------------------------------

# Measured with the default model in fp32 on the 2-core CPU, 64 ml-100k items (docs/engines.md):
# worst cosine vLLM vs transformers 0.99999988, worst relative L2 error 8.6e-7. Bounds with a
# 10x margin. (In bf16 the two engines differ by up to 1% relative error, cosine 0.99996.)
MIN_COSINE = 0.99999
MAX_REL_ERR = 1e-5


@pytest.fixture(scope="module")
def default_model_dir(test_cache_dir: Path) -> Path:
    from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
    from storage.model_cache import ensure_default_model

    return ensure_default_model(test_cache_dir, GGUF_TO_SAFETENSORS)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_vllm_cpu_engine_on_ml100k_agrees_with_transformers(
    default_model_dir: Path, recbole_wheel: Path
) -> None:
    llm = LlmConfig(dtype="float32", max_new_tokens=64, seed=11)
    settings = generation_settings(llm)
    records = read_recbole_atomic(recbole_wheel, ML100K_ITEM_MEMBER)  # the real ml-100k files
    items = [MovieLens100K().map_item(r.fields) for r in itertools.islice(records, 8)]
    assert items[0]["title"] == "Toy Story"
    engine = make_engine("vllm", default_model_dir, settings, **engine_options(llm))
    try:
        rendered = [engine.render(build_prompt(item, "movie")) for item in items]
        t0 = time.perf_counter()
        completions = engine.generate(rendered)
        t1 = time.perf_counter()
        vectors = engine.embed(
            [c.prompt_token_ids for c in completions], [c.completion_token_ids for c in completions]
        )
        t2 = time.perf_counter()
        # Same items, other order, same engine: the same archetypes (per-prompt seeds).
        again = engine.generate(rendered[::-1])[::-1]
    finally:
        engine.close()
    print(f"vllm generate (incl. start-up) {t1 - t0:.1f} s, embed (incl. start-up) {t2 - t1:.1f} s")

    assert len(completions) == len(vectors) == 8
    for c, a in zip(completions, again, strict=True):
        assert c.text.strip(), "empty archetype"
        assert c.finish_reason in ("stop", "length")
        assert 1 <= len(c.completion_token_ids) <= settings.max_new_tokens
        assert c.completion_token_ids == a.completion_token_ids
    for input_emb, gen_emb in vectors:
        for v in (input_emb, gen_emb):
            assert v.shape == (576,)
            assert v.dtype == np.float32
            assert np.isfinite(v).all()
    # Row pairs differ: the vectors carry the item, not a constant.
    assert cosine(vectors[0][0], vectors[1][0]) < 0.9999

    hf = HFEngine(default_model_dir, settings, batch_size=8)
    reference = hf.embed(
        [c.prompt_token_ids for c in completions], [c.completion_token_ids for c in completions]
    )
    for (vi, vg), (hi, hg) in zip(vectors, reference, strict=True):
        for v, h in ((vi, hi), (vg, hg)):
            assert cosine(v, h) > MIN_COSINE
            assert np.linalg.norm(v - h) / np.linalg.norm(h) < MAX_REL_ERR


def test_vllm_sockets_fit_the_path_limit_whatever_the_temp_folder(tmp_path: Path) -> None:
    # vLLM binds sockets named by a uuid4 in its socket folder; a socket path over 107 bytes
    # fails every request ("ipc path ... is longer than 107 characters"), as a long TMPDIR made.
    short = Path("/tmp/t")
    assert socket_parent(short, 4_194_304) == short
    deep = tmp_path / ("x" * 60)
    parent = socket_parent(deep, 4_194_304)
    assert parent == Path("/tmp")
    socket = parent / f"{SOCKET_FOLDER_PREFIX}4194304" / "4298999a-4e89-4e12-af73-0c42a4a7a52c"
    assert len(os.fsencode(socket)) <= SOCKET_PATH_MAX
