"""Archetype engines behind one contract (base.ArchetypeEngine), chosen by name.

    engine = make_engine("vllm", model_dir, GenerationSettings(seed=7))
    completions = engine.generate([engine.render(build_prompt(item, "movie"))])
    vectors = engine.embed([c.prompt_token_ids for c in completions],
                           [c.completion_token_ids for c in completions])
    engine.close()

Neither module imports vLLM at import time, so the registry can be listed anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genair_core.engines.base import (
    ArchetypeEngine,
    Completion,
    Embedding,
    GenerationSettings,
)
from genair_core.engines.hf_engine import HFEngine
from genair_core.engines.vllm_engine import VllmEngine

ENGINES: dict[str, type] = {
    "vllm": VllmEngine,
    "transformers": HFEngine,
}


def make_engine(
    name: str, model_dir: Path, settings: GenerationSettings | None = None, **options: Any
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
    "GenerationSettings",
    "HFEngine",
    "VllmEngine",
    "make_engine",
]
