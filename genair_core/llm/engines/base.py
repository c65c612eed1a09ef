"""The contract every archetype engine honours: write archetypes, then embed them.

GenAIR stages 2-3 (docs/method.md): an engine samples a completion (the archetype) for each
rendered prompt, then reads the last-layer hidden states (after the final norm) of one
teacher-forced pass over prompt + completion and averages them over two spans:

    input_emb = mean over the prompt tokens                          (hidden,) float32
    gen_emb   = mean over the completion tokens up to and including the first EOS, nothing after

Engines: "vllm" (vllm_engine.VllmEngine) and "transformers" (hf_engine.HFEngine); `make_engine`
picks one by name. An engine loads its model once and is reused across batches (pool.EnginePool
owns the engines of a run); `close()` frees its processes and memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from genair_core.config import LlmConfig

Dtype = Literal["float32", "bfloat16", "float16"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling and numerics of one archetype run; part of what makes an archetype reproducible.

    Every field is required: the defaults are LlmConfig's, and `generation_settings(llm)` is the
    one place an [llm] section becomes these settings.
    """

    temperature: float
    top_p: float
    repetition_penalty: float
    max_new_tokens: int
    seed: int
    dtype: Dtype  # compute dtype

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (sampling), got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def generation_settings(llm: LlmConfig) -> GenerationSettings:
    """The generation settings an [llm] section asks for."""
    return GenerationSettings(
        temperature=llm.temperature,
        top_p=llm.top_p,
        repetition_penalty=llm.repetition_penalty,
        max_new_tokens=llm.max_new_tokens,
        seed=llm.seed,
        dtype=llm.dtype,
    )


@dataclass(frozen=True)
class Completion:
    """One sampled archetype. `completion_token_ids` ends with EOS when finish_reason is "stop"."""

    text: str  # decoded completion, special tokens removed
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]
    finish_reason: FinishReason


Embedding = tuple[np.ndarray, np.ndarray]  # (input_emb, gen_emb), each (hidden,) float32


@runtime_checkable
class ArchetypeEngine(Protocol):
    name: str
    hidden_size: int
    eos_token_ids: frozenset[int]

    def render(self, prompt: str) -> str:
        """The prompt as the model's chat template writes a user turn (special tokens included)."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens `generate` reads for `text`, a rendered prompt (no special tokens
        added: the chat template already wrote them)."""
        ...

    def generate(self, prompts: list[str]) -> list[Completion]:
        """One completion per rendered prompt, in order. Prompts are tokenised without adding
        special tokens: the chat template already wrote them."""
        ...

    def embed(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> list[Embedding]:
        """(input_emb, gen_emb) per row from one teacher-forced pass over prompt + completion."""
        ...

    def close(self) -> None: ...


def completion_span(completion_ids: Sequence[int], eos_token_ids: frozenset[int]) -> int:
    """How many completion tokens gen_emb averages: up to and including the first EOS."""
    for i, token in enumerate(completion_ids):
        if token in eos_token_ids:
            return i + 1
    return len(completion_ids)


def check_embed_inputs(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
) -> None:
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(
            f"{len(prompt_ids)} prompts but {len(completion_ids)} completions; they pair up by row"
        )
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        if len(p) == 0 or len(c) == 0:
            raise ValueError(
                f"row {row}: empty {'prompt' if len(p) == 0 else 'completion'} token ids; "
                "both spans need at least one token"
            )


def span_means(hidden: np.ndarray, n_prompt: int, n_gen: int) -> Embedding:
    """Means of one row's hidden states (T, H) over [0, n_prompt) and [n_prompt, n_prompt + n_gen),
    accumulated in float64 and returned as float32."""
    h = np.asarray(hidden, dtype=np.float64)
    input_emb = h[:n_prompt].mean(axis=0)
    gen_emb = h[n_prompt : n_prompt + n_gen].mean(axis=0)
    return input_emb.astype(np.float32), gen_emb.astype(np.float32)


def request_seed(seed: int, prompt: str) -> int:
    """The sampling seed of one prompt: a function of the run seed and the prompt alone, so an
    item's archetype does not depend on which batch it lands in or where."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF


def load_eos_token_ids(model_dir: Path, tokenizer: object) -> frozenset[int]:
    """Every token that ends a completion: the tokenizer's EOS plus generation_config's list."""
    from transformers import GenerationConfig

    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    try:
        gen = GenerationConfig.from_pretrained(model_dir, local_files_only=True)
    except OSError:  # no generation_config.json
        gen = None
    if gen is not None and gen.eos_token_id is not None:
        extra = gen.eos_token_id
        ids.update(int(t) for t in (extra if isinstance(extra, list) else [extra]))
    if not ids:
        raise ValueError(f"{model_dir}: neither the tokenizer nor generation_config names an EOS")
    return frozenset(ids)
