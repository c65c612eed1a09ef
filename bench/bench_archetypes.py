"""Archetype + embeddings: genair's vLLM engine against what the paper's code does, same run.

    .venv/bin/python bench/bench_archetypes.py                  # 64 items, fp32, 128 new tokens
    .venv/bin/python bench/bench_archetypes.py --items 8        # quick check

Both sides get the same items (the first `--items` rows of RecBole's ml-100k `ml-100k.item`,
mapped as the pipeline maps them), the same prompts (`build_prompt(item, "movie")` rendered with
the model's chat template, tokenised without adding special tokens), the same model folder
(default: SmolLM2-135M-Instruct from the local model cache), dtype and max new tokens, and the
same sampling settings (temperature 0.6, top_p 0.9, repetition penalty 1.2).

reference   what data/getEmb.py of the paper's code does: transformers `model.generate(...,
            do_sample=True, output_hidden_states=True, return_dict_in_generate=True)` on batches
            of 16 with left padding (HF's default top_k=50 included, as there), then per row:
            input_emb = mean of the first step's last-layer states over the non-pad prompt
            positions; gen_emb = mean of the last-layer state of every later step of that row;
            the completion text is decoded. Its two bugs are not copied (method.md, stage 3):
            the completion is cut at the padded prompt width (not the unpadded length) and at
            the row's first EOS, so steps after EOS are not averaged. Its inefficiency is kept:
            every layer's hidden states of every step are materialised, and rows that finished
            keep decoding until the batch's longest row ends. The model is loaded once; the
            load is timed separately.
fast path   genair's VllmEngine: one `generate` of all items in one batch, then one `embed`
            (a teacher-forced pass of a pooling-runner instance over prompt + completion). Both
            vLLM instances are started before the clock runs; start-up is timed separately.

The headline ratio is steady-state items/s (fast path / reference, start-up and model load
excluded); the ratio with start-up and load included is printed too. Output tokens are each
side's own completion tokens up to and including EOS (the sides sample different completions, so
tokens/s is reported next to items/s). Load averages are recorded at the start and end of every
timed section: the machine is shared, and a load well above the benchmark's own ~2 means
contention.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_machine import cpu_model

from genair_core.config import DatasetConfig, LlmConfig
from genair_core.datasets.movielens import MovieLens100K
from genair_core.engines import VllmEngine, engine_options, generation_settings
from genair_core.engines.base import completion_span, load_eos_token_ids, request_seed
from genair_core.prompts import PROMPT_VERSION, build_prompt, render_chat
from storage.datasets import open_dataset
from storage.model_cache import resolve_model

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="first N items of ml-100k.item")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--max-new-tokens", type=int, default=LlmConfig().max_new_tokens)
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=2.0,
        help="the vLLM generator's KV cache; 2 GiB (the pipeline's is 1) holds the sampler "
        "study's 4x batch",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="reference batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="'default' or a local HF model folder")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/genair").expanduser())
    parser.add_argument(
        "--sampler-study",
        action="store_true",
        help="instead of the comparison: vLLM generate throughput under other sampling settings "
        "and at 2x and 4x the batch (fast side only, every row forced to max new tokens)",
    )
    return parser.parse_args(argv)


@dataclass
class Section:
    """One timed section: wall seconds and the 1-minute load average at its start and end."""

    name: str
    seconds: float = 0.0
    load_start: float = 0.0
    load_end: float = 0.0

    def __enter__(self) -> Section:
        self.load_start = os.getloadavg()[0]
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.load_end = os.getloadavg()[0]

    @property
    def load(self) -> str:
        return f"{self.load_start:.2f} → {self.load_end:.2f}"


@dataclass
class Result:
    items: int
    prompt_tokens: int
    output_tokens: int
    stopped: int  # rows that ended with EOS (the rest hit max new tokens)
    bad_vectors: int  # rows whose vectors are missing, of the wrong shape or not finite


def load_items(cache_dir: Path, n: int) -> list[dict]:
    """The first n items of ml-100k.item, mapped as the pipeline maps them."""
    dataset = MovieLens100K()
    items = []
    for record in open_dataset(DatasetConfig(name="movielens-100k"), cache_dir).item_records():
        if record.fields is None:
            continue
        items.append(dataset.map_item(record.fields))
        if len(items) == n:
            break
    if len(items) < n:
        raise SystemExit(f"ml-100k.item has only {len(items)} readable items, asked for {n}")
    return items


def bad_vector(v: object, hidden: int) -> bool:
    if v is None:
        return True
    a = np.asarray(v)
    return a.shape != (hidden,) or not np.isfinite(a).all()


# ---- reference: what the paper's data/getEmb.py does ------------------------------------------


def reference_load(model_dir: Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=_DTYPES[dtype], local_files_only=True
    ).eval()
    return model, tokenizer


@torch.inference_mode()
def reference_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, eos: frozenset):
    """One batch as getEmb.py's batch_get_model_responses, minus its two bugs.

    Returns per row: (prompt ids, generated ids up to and including EOS, text, input_emb,
    gen_emb)."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        repetition_penalty=1.2,
        return_dict_in_generate=True,
        output_hidden_states=True,
        pad_token_id=tokenizer.eos_token_id,
    )
    width = enc["input_ids"].shape[1]
    n_steps = len(out.hidden_states)  # step 0: the prompt; step k: generated token k-1 fed in
    rows = []
    for i in range(len(prompts)):
        mask = enc["attention_mask"][i].bool()
        # Reference bug 1 avoided: the completion starts at the padded width, not at the
        # unpadded prompt length. Bug 2 avoided: it ends at the row's first EOS.
        new = out.sequences[i, width:].tolist()
        n_gen = completion_span(new, eos)
        generated = new[:n_gen]
        text = tokenizer.decode(generated, skip_special_tokens=True).strip()
        first_hidden = out.hidden_states[0][-1][i].detach().cpu()  # (width, H)
        input_emb = first_hidden[mask].mean(dim=0)
        steps = [
            out.hidden_states[k + 1][-1][i].detach().cpu()  # (1, H)
            for k in range(n_gen)
            if k < n_steps - 1
        ]
        gen_emb = torch.stack(steps).mean(dim=0)[0] if steps else None
        rows.append(
            (
                enc["input_ids"][i][mask].tolist(),
                generated,
                text,
                input_emb.float().tolist(),  # the reference writes the vectors as JSON lists
                gen_emb.float().tolist() if gen_emb is not None else None,
            )
        )
    return rows


def run_reference(
    args, model_dir: Path, prompts: list[str]
) -> tuple[Section, Section, Result, list]:
    with Section("reference: model load") as load:
        model, tokenizer = reference_load(model_dir, args.dtype)
    eos = load_eos_token_ids(model_dir, tokenizer)
    hidden = int(model.config.hidden_size)
    torch.manual_seed(args.seed)
    rows = []
    with Section("reference: generate(output_hidden_states) + means") as run:
        for start in range(0, len(prompts), args.batch_size):
            batch = prompts[start : start + args.batch_size]
            rows += reference_batch(model, tokenizer, batch, args.max_new_tokens, eos)
    del model
    gc.collect()
    result = Result(
        items=len(rows),
        prompt_tokens=sum(len(r[0]) for r in rows),
        output_tokens=sum(len(r[1]) for r in rows),
        stopped=sum(1 for r in rows if r[1] and r[1][-1] in eos),
        bad_vectors=sum(1 for r in rows if bad_vector(r[3], hidden) or bad_vector(r[4], hidden)),
    )
    return load, run, result, [r[0] for r in rows]


# ---- fast path: genair's VllmEngine -----------------------------------------------------------


def vllm_engine(args, model_dir: Path) -> VllmEngine:
    llm = LlmConfig(
        engine="vllm",
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        kv_cache_gib=args.kv_cache_gib,
    )
    return VllmEngine(model_dir, generation_settings(llm), **engine_options(llm))


def run_fast(args, model_dir: Path, prompts: list[str]):
    with Section("vLLM: engine start-up (generator + pooler)") as startup:
        engine = vllm_engine(args, model_dir)
        # The engine starts its two vLLM instances lazily on first use; start them here so that
        # start-up stays out of the steady-state clock.
        engine._generate_llm()
        engine._pool_llm()
    try:
        with Section("vLLM: generate") as gen:
            completions = engine.generate(prompts)
        with Section("vLLM: embed") as emb:
            vectors = engine.embed(
                [c.prompt_token_ids for c in completions],
                [c.completion_token_ids for c in completions],
            )
    finally:
        engine.close()
    hidden = engine.hidden_size
    result = Result(
        items=len(completions),
        prompt_tokens=sum(len(c.prompt_token_ids) for c in completions),
        output_tokens=sum(len(c.completion_token_ids) for c in completions),
        stopped=sum(1 for c in completions if c.finish_reason == "stop"),
        bad_vectors=sum(1 for i, g in vectors if bad_vector(i, hidden) or bad_vector(g, hidden)),
    )
    embed_tokens = sum(
        len(c.prompt_token_ids) + completion_span(c.completion_token_ids, engine.eos_token_ids)
        for c in completions
    )
    empty = sum(1 for c in completions if not c.text.strip())
    return (
        startup,
        gen,
        emb,
        result,
        embed_tokens,
        empty,
        [list(c.prompt_token_ids) for c in completions],
    )


# (label, SamplingParams overrides); "seeded" = one seed per prompt, as VllmEngine does.
SAMPLER_VARIANTS: tuple[tuple[str, dict], ...] = (
    ("greedy", {"temperature": 0.0}),
    ("temperature 0.6", {"temperature": 0.6}),
    ("temperature 0.6, top_k 50", {"temperature": 0.6, "top_k": 50}),
    ("temperature 0.6, top_p 0.9", {"temperature": 0.6, "top_p": 0.9}),
    ("temperature 0.6, repetition penalty 1.2", {"temperature": 0.6, "repetition_penalty": 1.2}),
    (
        "temperature 0.6, top_p 0.9, repetition penalty 1.2",
        {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2},
    ),
    (
        "the same + top_k 50 (HF generate's default, as in the reference)",
        {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2, "top_k": 50},
    ),
    (
        "genair's settings: top_p 0.9, repetition penalty 1.2, seed per prompt",
        {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2, "seeded": True},
    ),
)


def run_sampler_study(args, model_dir: Path, prompts: list[str]) -> None:
    """Where vLLM's decode time goes: the same prompts under other sampling settings.

    Every row generates exactly max new tokens (ignore_eos), so rows compare per-token cost. The
    last variant is repeated at 2x and 4x the batch (the prompt list repeated, seeds per copy) to
    show whether a bigger batch would amortise per-step costs."""
    from vllm import SamplingParams

    with Section("vLLM: generator start-up") as startup:
        engine = vllm_engine(args, model_dir)
        llm = engine._generate_llm()
    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    runs = [(label, sp, 1) for label, sp in SAMPLER_VARIANTS]
    runs += [(SAMPLER_VARIANTS[-1][0], SAMPLER_VARIANTS[-1][1], k) for k in (2, 4)]
    rows = []
    try:
        for label, overrides, copies in runs:
            sp = dict(overrides)
            seeded = sp.pop("seeded", False)
            inputs, params = [], []
            for copy in range(copies):
                for prompt, tokens in zip(prompts, ids, strict=True):
                    inputs.append({"prompt_token_ids": tokens})
                    seed = request_seed(engine.settings.seed + copy, prompt) if seeded else None
                    params.append(
                        SamplingParams(
                            max_tokens=args.max_new_tokens, ignore_eos=True, seed=seed, **sp
                        )
                    )
            with Section(label) as section:
                outputs = llm.generate(inputs, params, use_tqdm=False)
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            rows.append((label, len(inputs), tokens, section))
    finally:
        engine.close()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## vLLM sampler study, {when}\n")
    print(
        f"machine: {cpu_model()}; vllm generator start-up {startup.seconds:.1f} s; model "
        f"{model_dir.name}, {args.dtype}; every row generates {args.max_new_tokens} tokens"
    )
    print()
    print("| sampling | batch | output tokens | seconds | output tokens/s | ms per step | load |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, batch, tokens, sec in rows:
        print(
            f"| {label} | {batch} | {tokens:,} | {sec.seconds:.1f} | "
            f"{tokens / sec.seconds:.0f} | {1000 * sec.seconds / args.max_new_tokens:.0f} "
            f"| {sec.load} |"
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the results readable
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model_dir = resolve_model(args.model, args.cache_dir)
    items = load_items(args.cache_dir, args.items)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompts = [render_chat(tokenizer, build_prompt(item, "movie")) for item in items]
    del tokenizer
    if args.sampler_study:
        run_sampler_study(args, model_dir, prompts)
        return

    load_before = os.getloadavg()
    ref_load, ref_run, ref, ref_prompt_ids = run_reference(args, model_dir, prompts)
    startup, gen, emb, fast, embed_tokens, empty, fast_prompt_ids = run_fast(
        args, model_dir, prompts
    )
    load_after = os.getloadavg()
    if ref_prompt_ids != fast_prompt_ids:
        raise SystemExit("MISMATCH: the two sides tokenised the prompts differently")

    import transformers
    import vllm

    fast_steady = gen.seconds + emb.seconds
    fast_total = startup.seconds + fast_steady
    ref_total = ref_load.seconds + ref_run.seconds
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## Archetype + embeddings, {when}\n")
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({threads} usable), "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; "
        f"python {platform.python_version()}, torch {torch.__version__} ({threads} threads), "
        f"transformers {transformers.__version__}, vllm {vllm.__version__}"
    )
    print(
        f"model: {model_dir.name}, {args.dtype}; {args.items} ml-100k items, prompt version "
        f"{PROMPT_VERSION}, {ref.prompt_tokens / ref.items:.1f} prompt tokens per item; "
        f"max new tokens {args.max_new_tokens}; seed {args.seed}; reference batch "
        f"{args.batch_size}, vLLM one batch of {args.items}"
    )
    print(
        "vLLM CPU binding: VLLM_CPU_OMP_THREADS_BIND="
        f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND')}, VLLM_CPU_NUM_OF_RESERVED_CPU="
        f"{os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU')}"
    )
    print(
        "load average (1/5/15 min): before "
        + "/".join(f"{x:.2f}" for x in load_before)
        + ", after "
        + "/".join(f"{x:.2f}" for x in load_after)
    )
    print()
    print("| section | seconds | 1-min load start → end |")
    print("|---|---:|---|")
    for s in (ref_load, ref_run, startup, gen, emb):
        print(f"| {s.name} | {s.seconds:.1f} | {s.load} |")
    print()
    print("| side | items | output tokens | EOS / max | seconds | items/s | output tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")

    def row(name: str, r: Result, seconds: float) -> None:
        print(
            f"| {name} | {r.items} | {r.output_tokens:,} | {r.stopped} / {r.items - r.stopped} "
            f"| {seconds:.1f} | {r.items / seconds:.2f} | {r.output_tokens / seconds:.0f} |"
        )

    row("reference, steady state (model loaded)", ref, ref_run.seconds)
    row("genair vLLM, steady state (engines started)", fast, fast_steady)
    row("reference incl. model load", ref, ref_total)
    row("genair vLLM incl. start-up", fast, fast_total)
    print()
    items_ratio = (fast.items / fast_steady) / (ref.items / ref_run.seconds)
    tokens_ratio = (fast.output_tokens / fast_steady) / (ref.output_tokens / ref_run.seconds)
    total_ratio = (fast.items / fast_total) / (ref.items / ref_total)
    print(f"**ratio (headline, steady-state items/s, vLLM / reference): {items_ratio:.2f}×**")
    print(f"ratio, steady-state output tokens/s: {tokens_ratio:.2f}×")
    print(f"ratio, items/s including vLLM start-up and reference model load: {total_ratio:.2f}×")
    print(
        f"vLLM split: generate {gen.seconds:.1f} s ({fast.output_tokens / gen.seconds:.0f} output "
        f"tokens/s), embed {emb.seconds:.1f} s ({embed_tokens:,} prompt + completion tokens, "
        f"{embed_tokens / emb.seconds:.0f} tokens/s)"
    )
    problems = ref.bad_vectors + fast.bad_vectors + empty
    print(
        f"checks: same prompt token ids on both sides; bad vectors reference {ref.bad_vectors}, "
        f"vLLM {fast.bad_vectors}; empty vLLM archetypes {empty}"
        + ("" if problems == 0 else "  <-- PROBLEM")
    )


if __name__ == "__main__":
    main()
