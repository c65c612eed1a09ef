"""Archetype engines behind one contract (base.ArchetypeEngine), chosen by name.

    llm = LlmConfig(seed=7)
    engine = make_engine("vllm", model_dir, generation_settings(llm), **engine_options(llm))
    completions = engine.generate([engine.render(build_prompt(item, "movie"))])
    vectors = engine.embed([c.prompt_token_ids for c in completions],
                           [c.completion_token_ids for c in completions])
    engine.close()

A run's engines live in an EnginePool (pool.py), which makes them with `make_engine`.

Neither module imports vLLM at import time, so the registry can be listed anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genair_core.llm.engines.base import (
    ArchetypeEngine,
    Completion,
    Embedding,
    GenerationSettings,
    generation_settings,
)
from genair_core.llm.engines.hf_engine import HFEngine
from genair_core.llm.engines.pool import EngineFactory, EnginePool, engine_options
from genair_core.llm.engines.vllm_engine import VllmEngine

ENGINES: dict[str, type] = {
    "vllm": VllmEngine,
    "transformers": HFEngine,
}


def make_engine(
    name: str, model_dir: Path, settings: GenerationSettings, **options: Any
) -> ArchetypeEngine:
    """The engine registered under `name`, loading `model_dir` (a local HF model folder)."""
    try:
        cls = ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; valid engines: {', '.join(sorted(ENGINES))}"
        ) from None
    return cls(model_dir, settings, **options)


__all__ = [
    "ENGINES",
    "ArchetypeEngine",
    "Completion",
    "Embedding",
    "EngineFactory",
    "EnginePool",
    "GenerationSettings",
    "HFEngine",
    "VllmEngine",
    "engine_options",
    "generation_settings",
    "make_engine",
]
