"""The LLM stage under other dtypes and batch sizes: items/s, and how far the embeddings move.

    .venv/bin/python bench/bench_llm_settings.py                       # fp32 against bf16, 64 items
    .venv/bin/python bench/bench_llm_settings.py --batches 64 128 --items 128

For each setting, one VllmEngine generates and embeds the first N ml-100k items (as the pipeline
prompts them) in batches, timed after start-up. The embeddings of other dtypes are compared with
fp32's on the same text: fp32's completions are embedded again by each engine, so the cosine
measures the dtype alone, not a different sample. The fp32 run at the first batch size is the
baseline of the items/s ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import numpy as np
from bench_archetypes import load_items
from machine_info import cpu_description

from genair_core.config import LlmConfig
from genair_core.llm.engines import VllmEngine, engine_options, generation_settings
from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
from genair_core.llm.prompts import build_prompt, render_chat
from storage.model_cache import resolve_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64])
    parser.add_argument("--max-new-tokens", type=int, default=LlmConfig().max_new_tokens)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/genair").expanduser())
    return parser.parse_args(argv)


def run_setting(model_dir: Path, prompts: list[str], dtype: str, batch: int, args, reference):
    """Seconds to generate + embed `prompts` in batches of `batch`, the completions and their
    embeddings, and (when `reference` holds fp32's completions) this dtype's embeddings of those
    same texts."""
    llm = LlmConfig(dtype=dtype, max_new_tokens=args.max_new_tokens, batch_size=batch)
    engine = VllmEngine(model_dir, generation_settings(llm), **engine_options(llm))
    engine._generate_llm()
    engine._pool_llm()
    try:
        completions, vectors, seconds_generate, seconds_embed = [], [], 0.0, 0.0
        for start in range(0, len(prompts), batch):
            began = time.perf_counter()
            done = engine.generate(prompts[start : start + batch])
            seconds_generate += time.perf_counter() - began
            began = time.perf_counter()
            vectors += engine.embed(
                [c.prompt_token_ids for c in done], [c.completion_token_ids for c in done]
            )
            seconds_embed += time.perf_counter() - began
            completions += done
        same_text = None
        if reference is not None:
            same_text = engine.embed(
                [c.prompt_token_ids for c in reference], [c.completion_token_ids for c in reference]
            )
    finally:
        engine.close()
    tokens = sum(len(c.completion_token_ids) for c in completions)
    return completions, vectors, seconds_generate, seconds_embed, tokens, same_text


def cosines(a: list[tuple[np.ndarray, np.ndarray]], b: list[tuple[np.ndarray, np.ndarray]]):
    def cos(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    return (
        np.array([cos(x[0], y[0]) for x, y in zip(a, b, strict=True)]),
        np.array([cos(x[1], y[1]) for x, y in zip(a, b, strict=True)]),
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    model_dir = resolve_model("default", args.cache_dir, GGUF_TO_SAFETENSORS)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompts = [
        render_chat(tokenizer, build_prompt(item, "movie"))
        for item in load_items(args.cache_dir, args.items)
    ]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"machine: {cpu_description()}")
    print(f"{len(prompts)} ml-100k items, <= {args.max_new_tokens} new tokens, {when}")
    print("| dtype | batch | generate s | output tokens/s | embed s | items/s | vs first | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    baseline, fp32_completions, fp32_vectors = None, None, None
    same_text: dict[str, list] = {}
    for dtype in args.dtypes:
        for batch in args.batches:
            load = os.getloadavg()[0]
            reference = fp32_completions if dtype != "float32" else None
            completions, vectors, gen_s, emb_s, tokens, again = run_setting(
                model_dir, prompts, dtype, batch, args, reference
            )
            if dtype == "float32" and fp32_completions is None:
                fp32_completions, fp32_vectors = completions, vectors
            if again is not None:
                same_text[f"{dtype}, batch {batch}"] = again
            rate = len(prompts) / (gen_s + emb_s)
            baseline = baseline or rate
            print(
                f"| {dtype} | {batch} | {gen_s:.1f} | {tokens / gen_s:.0f} | {emb_s:.1f} | "
                f"{rate:.2f} | {rate / baseline:.2f}x | {load:.2f} -> {os.getloadavg()[0]:.2f} |"
            )
    for name, vectors in same_text.items():
        inp, gen = cosines(fp32_vectors, vectors)
        print(
            f"\n{name} against float32, the same texts: cosine input_emb min {inp.min():.5f} "
            f"median {np.median(inp):.5f}; gen_emb min {gen.min():.5f} median {np.median(gen):.5f}"
        )


if __name__ == "__main__":
    main()
