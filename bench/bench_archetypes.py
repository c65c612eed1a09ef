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
import hashlib
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from bench_machine import decode_flop_per_token, vllm_matmul_rate
from machine_info import cpu_description

from genair_core.config import DatasetConfig, LlmConfig
from genair_core.data.datasets.movielens import MovieLens100K
from genair_core.llm.engines import VllmEngine, engine_options, generation_settings
from genair_core.llm.engines.base import completion_span, load_eos_token_ids, request_seed
from genair_core.llm.engines.gguf import GGUF_TO_SAFETENSORS
from genair_core.llm.prompts import PROMPT_VERSION, build_prompt, render_chat
from storage.datasets import open_movielens_100k
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
    parser.add_argument("--repeats", type=int, default=1, help="sampler study: runs per variant")
    parser.add_argument(
        "--variants",
        type=int,
        nargs="+",
        help="sampler study: only these rows of SAMPLER_VARIANTS (0-based), e.g. 0 4",
    )
    parser.add_argument("--model", default="default", help="'default' or a local HF model folder")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/genair").expanduser())
    parser.add_argument(
        "--preload",
        action="store_true",
        help="start vLLM's worker with tcmalloc and libiomp5 in LD_PRELOAD (VllmEngine's "
        "preload_libraries=True)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="vLLM with torch.compile (enforce_eager=False) instead of eager mode",
    )
    parser.add_argument(
        "--native-sampler",
        action="store_true",
        help="vLLM's own top_p and repetition penalty instead of genair's logits processors "
        "(VllmEngine's native_sampler=True: the engine as it was before them)",
    )
    parser.add_argument(
        "--sampler-micro",
        action="store_true",
        help="instead of the comparison: each sampler piece alone (vLLM's and genair's), ms per "
        "step at batch --items, on real logits, ~1 min",
    )
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
    for record in open_movielens_100k(DatasetConfig(), cache_dir).item_records():
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
    return VllmEngine(
        model_dir,
        generation_settings(llm),
        **engine_options(llm),
        preload_libraries=args.preload,
        compile_model=args.compile,
        native_sampler=args.native_sampler,
    )


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
    digest = hashlib.sha256(repr([c.completion_token_ids for c in completions]).encode())
    print(f"vLLM completion token ids, sha256: {digest.hexdigest()[:16]}")
    return (
        startup,
        gen,
        emb,
        result,
        embed_tokens,
        empty,
        [list(c.prompt_token_ids) for c in completions],
    )


class StepTimer:
    """Where each millisecond of a vLLM engine step goes, timed in this process.

    VllmEngine runs vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so its
    step can be wrapped: `schedule` + `update_from_output` (the scheduler), the worker's
    `execute_model` (forward pass with LM head, plus the round trip to the worker process) and its
    `sample_tokens` (the sampler: logits processors, penalties, temperature, top-k/top-p, the
    draw, and the worker's per-step bookkeeping). What remains of the wall time between steps is
    LLM.generate's output processing (detokenisation). A step whose scheduled tokens exceed its
    requests is a prefill step and is reported apart.
    """

    PARTS = ("forward", "sampler", "scheduler")

    def __init__(self, llm) -> None:
        from concurrent.futures import Future

        core = llm.llm_engine.engine_core.engine_core
        self.steps: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        scheduler, executor = core.scheduler, core.model_executor
        schedule, update = scheduler.schedule, scheduler.update_from_output
        execute, sample = executor.execute_model, executor.sample_tokens

        def timed_schedule(*a, **k):
            t0 = time.perf_counter()
            out = schedule(*a, **k)
            self._current = {
                "start": t0,
                "scheduler": time.perf_counter() - t0,
                "prefill": out.total_num_scheduled_tokens > len(out.num_scheduled_tokens),
            }
            return out

        def timed_execute(scheduler_output, non_block=False):
            t0 = time.perf_counter()
            result = execute(scheduler_output, non_block=False)
            self._current["forward"] = time.perf_counter() - t0
            if not non_block:
                return result
            done: Future = Future()
            done.set_result(result)
            return done

        def timed_sample(*a, **k):
            t0 = time.perf_counter()
            out = sample(*a, **k)
            self._current["sampler"] = time.perf_counter() - t0
            return out

        def timed_update(*a, **k):
            t0 = time.perf_counter()
            out = update(*a, **k)
            end = time.perf_counter()
            self._current["scheduler"] += end - t0
            self._current["end"] = end
            self.steps.append(self._current)
            return out

        scheduler.schedule, scheduler.update_from_output = timed_schedule, timed_update
        executor.execute_model, executor.sample_tokens = timed_execute, timed_sample

    def reset(self) -> None:
        self.steps = []

    def decode_ms(self, wall: float) -> dict[str, float]:
        """Mean ms per decode step: total (wall share), each part, and `other`."""
        decode = [st for st in self.steps if not st["prefill"]]
        prefill_wall = sum(st["end"] - st["start"] for st in self.steps if st["prefill"])
        n = max(1, len(decode))
        result = {"steps": float(len(decode)), "total": 1000 * (wall - prefill_wall) / n}
        for part in self.PARTS:
            result[part] = 1000 * sum(st.get(part, 0.0) for st in decode) / n
        result["other"] = result["total"] - sum(result[p] for p in self.PARTS)
        return result


# (label, SamplingParams overrides); "seeded" = one seed per prompt, as VllmEngine does;
# "genair" = (top_k, top_p, repetition_penalty) through genair's logits processors, with vLLM's
# own sampler left with the temperature only.
SAMPLER_VARIANTS: tuple[tuple[str, dict], ...] = (
    ("greedy", {"temperature": 0.0}),
    ("temperature 0.6 (no filter, no penalty)", {"temperature": 0.6, "seeded": True}),
    (
        "vLLM's sampler: top_p 0.9, repetition penalty 1.2 (genair before)",
        {"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2, "seeded": True},
    ),
    (
        "vLLM's sampler: top_k 50, top_p 0.9, repetition penalty 1.2 (the reference's)",
        {
            "temperature": 0.6,
            "top_k": 50,
            "top_p": 0.9,
            "repetition_penalty": 1.2,
            "seeded": True,
        },
    ),
    (
        "genair's processors: top_p 0.9, repetition penalty 1.2 (genair now)",
        {"temperature": 0.6, "genair": (0, 0.9, 1.2), "seeded": True},
    ),
    (
        "genair's processors: top_k 50, top_p 0.9, repetition penalty 1.2 (the reference's)",
        {"temperature": 0.6, "genair": (50, 0.9, 1.2), "seeded": True},
    ),
)


def run_sampler_study(args, model_dir: Path, prompts: list[str]) -> None:
    """Where vLLM's decode time goes: the same prompts under other sampling settings.

    Every row generates exactly max new tokens (ignore_eos), so rows compare per-token cost, and
    each step is split into forward, sampler, scheduler and other (StepTimer). Each variant runs
    `--repeats` times; the fastest run is reported."""
    from vllm import SamplingParams

    from genair_core.llm.engines.vllm_sampling import sampling_extra_args

    with Section("vLLM: generator start-up") as startup:
        engine = vllm_engine(args, model_dir)
        llm = engine._generate_llm()
    timer = StepTimer(llm)
    ids = [engine.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rows = []
    try:
        chosen = args.variants if args.variants is not None else range(len(SAMPLER_VARIANTS))
        for label, overrides in (SAMPLER_VARIANTS[i] for i in chosen):
            sp = dict(overrides)
            seeded = sp.pop("seeded", False)
            genair = sp.pop("genair", None)
            if genair is not None:
                sp["extra_args"] = sampling_extra_args(*genair)
            inputs = [{"prompt_token_ids": tokens} for tokens in ids]
            params = [
                SamplingParams(
                    max_tokens=args.max_new_tokens,
                    ignore_eos=True,
                    seed=request_seed(engine.settings.seed, prompt) if seeded else None,
                    **sp,
                )
                for prompt in prompts
            ]
            best = None
            for _ in range(args.repeats):
                timer.reset()
                with Section(label) as section:
                    outputs = llm.generate(inputs, params, use_tqdm=False)
                if best is None or section.seconds < best[1].seconds:
                    best = (outputs, section, timer.decode_ms(section.seconds))
            outputs, section, split = best
            tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
            rows.append((label, tokens, section, split))
    finally:
        engine.close()

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n## vLLM sampler study, {when}\n")
    print(
        f"machine: {cpu_description()}; vllm generator start-up {startup.seconds:.1f} s; model "
        f"{model_dir.name}, {args.dtype}; batch {len(prompts)}, every row generates "
        f"{args.max_new_tokens} tokens; LD_PRELOAD {os.environ.get('LD_PRELOAD', '')!r}; "
        f"{'torch.compile' if args.compile else 'eager'}; best of {args.repeats}"
    )
    print()
    print(
        "| sampling | output tokens | seconds | output tokens/s | ms per decode step | forward "
        "| sampler | scheduler | other | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for label, tokens, sec, split in rows:
        print(
            f"| {label} | {tokens:,} | {sec.seconds:.1f} | {tokens / sec.seconds:.0f} | "
            f"{split['total']:.1f} | {split['forward']:.1f} | {split['sampler']:.1f} | "
            f"{split['scheduler']:.1f} | {split['other']:.1f} | {sec.load} |"
        )


def run_sampler_micro(args, model_dir: Path, prompts: list[str]) -> None:
    """The sampler's pieces alone, best of `--repeats` (at least 10), on real logits.

    Logits: SmolLM2's next-token logits at the end of each prompt (one transformers forward
    pass, batch = `--items`), after temperature where the piece runs after it. Seen tokens: each
    prompt plus 100 tokens drawn from its vocabulary (a decode step half-way through 128 new
    tokens has ~80 + 64 seen)."""
    from vllm import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate
    from vllm.v1.sample.ops.penalties import apply_all_penalties
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

    from genair_core.llm.engines.vllm_sampling import (
        SeenTokenPenalty,
        TopKTopP,
        sampling_extra_args,
    )

    model, tokenizer = reference_load(model_dir, args.dtype)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        logits = model(**enc).logits[:, -1].float()
    n, vocab = logits.shape
    gen = torch.Generator().manual_seed(args.seed)
    prompt_ids = [enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist() for i in range(n)]
    output_ids = [torch.randint(0, vocab, (100,), generator=gen).tolist() for _ in range(n)]
    scaled = logits / 0.6
    repeats = max(10, args.repeats)

    def best_ms(fn) -> float:
        times = []
        for _ in range(repeats):
            x = scaled.clone()
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
        return 1000 * min(times)

    width = max(len(p) for p in prompt_ids)
    padded = torch.tensor([p + [vocab] * (width - len(p)) for p in prompt_ids])
    seeds = torch.randint(0, 2**31, (n,), generator=gen)
    rows = [
        (
            "vLLM: repetition penalty (dense count tables)",
            lambda x: apply_all_penalties(
                x, padded, torch.zeros(n), torch.zeros(n), torch.full((n,), 1.2), output_ids
            ),
        ),
        (
            "vLLM: top_p 0.9 (full sort)",
            lambda x: apply_top_k_top_p(x, None, torch.full((n,), 0.9)),
        ),
        (
            "vLLM: top_k 50 + top_p 0.9 (full sort)",
            lambda x: apply_top_k_top_p(x, torch.full((n,), 50), torch.full((n,), 0.9)),
        ),
        ("vLLM: temperature (divide)", lambda x: x.div_(torch.full((n, 1), 0.6))),
        (
            "vLLM: seeded draw (fused_gumbel_argmax)",
            lambda x: torch.ops._C.fused_gumbel_argmax(x, seeds),
        ),
    ]
    for label, top_k in (("top_p 0.9", 0), ("top_k 50 + top_p 0.9", 50)):
        params = SamplingParams(extra_args=sampling_extra_args(top_k, 0.9, 1.2))
        added = [(i, params, prompt_ids[i], output_ids[i]) for i in range(n)]
        penalty = SeenTokenPenalty(None, torch.device("cpu"), False)
        top = TopKTopP(None, torch.device("cpu"), False)
        for proc in (penalty, top):
            proc.update_state(BatchUpdate(batch_size=n, removed=[], added=added, moved=[]))
        if top_k == 0:
            rows.append(("genair: repetition penalty (seen tokens only)", penalty.apply))
        rows.append((f"genair: {label} (partial sort)", top.apply))
    results = [(label, best_ms(fn)) for label, fn in rows]
    nucleus = (~torch.isinf(top_k_top_p_exact(scaled))).sum(1)
    print(f"\n## Sampler pieces, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n")
    print(
        f"machine: {cpu_description()}; "
        f"{n} rows × {vocab:,} logits (SmolLM2 at the end of each prompt, temperature 0.6); best "
        f"of {repeats}; load {os.getloadavg()[0]:.2f}; top_p 0.9 nucleus without top-k: median "
        f"{int(nucleus.median())}, max {int(nucleus.max())} tokens"
    )
    print()
    print("| piece | ms per step |")
    print("|---|---:|")
    for label, ms in results:
        print(f"| {label} | {ms:.1f} |")


def top_k_top_p_exact(scaled: torch.Tensor) -> torch.Tensor:
    """top_p 0.9 without top-k on a copy (for the nucleus sizes the micro-benchmark reports)."""
    from genair_core.llm.engines.sampling import top_k_top_p

    n = scaled.shape[0]
    return top_k_top_p(scaled.clone(), torch.zeros(n, dtype=torch.long), torch.full((n,), 0.9))


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the results readable
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    model_dir = resolve_model(args.model, args.cache_dir, GGUF_TO_SAFETENSORS)
    items = load_items(args.cache_dir, args.items)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    prompts = [render_chat(tokenizer, build_prompt(item, "movie")) for item in items]
    del tokenizer
    if args.sampler_study:
        run_sampler_study(args, model_dir, prompts)
        return
    if args.sampler_micro:
        run_sampler_micro(args, model_dir, prompts)
        return

    load_before = os.getloadavg()
    # First, before any vLLM worker exists (a closing worker spins for seconds after close()).
    with Section("machine: oneDNN matmul rate, best of 3") as rate_section:
        rate = vllm_matmul_rate(args.dtype)
    ref_load, ref_run, ref, ref_prompt_ids = run_reference(args, model_dir, prompts)
    startup, gen, emb, fast, embed_tokens, empty, fast_prompt_ids = run_fast(
        args, model_dir, prompts
    )
    load_after = os.getloadavg()
    flop_per_token = decode_flop_per_token(model_dir)
    bound = rate * 1e9 / flop_per_token
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
        f"machine: {cpu_description()}, {os.cpu_count()} logical CPUs ({threads} usable), "
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
        f"vLLM engine: {'vLLM' if args.native_sampler else 'genair'}'s top-p and repetition "
        f"penalty; LD_PRELOAD {os.environ.get('LD_PRELOAD', '')!r}; "
        f"{'torch.compile' if args.compile else 'eager'}"
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
    for s in (rate_section, ref_load, ref_run, startup, gen, emb):
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
    gen_rate = fast.output_tokens / gen.seconds
    ref_rate = ref.output_tokens / ref_run.seconds
    print(
        f"compute bound (bench_machine): {args.dtype} oneDNN matmul {rate:.0f} GFLOP/s / "
        f"{flop_per_token / 1e9:.3f} GFLOP per generated token = {bound:,.0f} tokens/s; vLLM "
        f"generate {gen_rate:.0f} tokens/s = **{gen_rate / bound:.0%} of the bound**, "
        f"{gen_rate / ref_rate:.2f}× the reference's generate + means ({ref_rate:.0f} tokens/s)"
    )
    problems = ref.bad_vectors + fast.bad_vectors + empty
    print(
        f"checks: same prompt token ids on both sides; bad vectors reference {ref.bad_vectors}, "
        f"vLLM {fast.bad_vectors}; empty vLLM archetypes {empty}"
        + ("" if problems == 0 else "  <-- PROBLEM")
    )


if __name__ == "__main__":
    main()
