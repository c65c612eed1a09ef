"""The three flows with the test's own archetype engine factory: `run_pipeline`, `run_refresh`
and `run_backfill` inside flows of the tests' own, since the deployed flows take JSON parameters
only. Also a catalog big enough for stored PCA bases and a calibration adapter to be reused, and
an engine whose text and vectors follow from the prompt and which records what it generated."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from prefect import flow
from small_dataset import files_config

from flows.backfill import run_backfill
from flows.params import BackfillParams, RefreshParams
from flows.pipeline import run_pipeline
from flows.refresh import run_refresh
from flows.stages import STAGES
from genair_core.llm.engines import EngineFactory
from genair_core.llm.engines.base import Completion


@flow(name="genair-pipeline-scripted", validate_parameters=False)
def scripted_pipeline(
    config_path: str,
    engine_factory: EngineFactory,
    force: bool = False,
    until: str = STAGES[-1],
    start: str = STAGES[0],
) -> dict[str, dict]:
    return run_pipeline(
        config_path, force=force, until=until, start=start, engine_factory=engine_factory
    )


@flow(name="genair-refresh-scripted", validate_parameters=False)
def scripted_refresh(params: RefreshParams, engine_factory: EngineFactory) -> dict[str, dict]:
    return run_refresh(params, engine_factory=engine_factory)


@flow(name="genair-backfill-scripted", validate_parameters=False)
def scripted_backfill(params: BackfillParams, engine_factory: EngineFactory) -> dict[str, dict]:
    return run_backfill(params, engine_factory=engine_factory)


EOS = 0
DIM = 16


class TitleEngines:
    """An engine factory whose engines write "<wording> <title>" and vectors seeded by the token
    ids, and record the title of every item they generated for (`titles`). Another `wording`
    stands for a new prompt or engine: the same items, other archetypes and vectors."""

    def __init__(self, wording: str = "people who like", ending: str = "") -> None:
        self.wording = wording
        self.ending = ending
        self.titles: list[str] = []

    def __call__(self, *args: object, **kwargs: object) -> TitleEngine:
        return TitleEngine(self)


class TitleEngine:
    name = "vllm"
    hidden_size = DIM
    eos_token_ids = frozenset({EOS})

    def __init__(self, engines: TitleEngines) -> None:
        self.engines = engines

    @staticmethod
    def token_ids(text: str) -> list[int]:
        return [1 + sum(map(ord, word)) % 997 for word in text.split()]

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids(text))

    def render(self, prompt: str) -> str:
        return f"<user> {prompt} <assistant>"

    def generate(self, prompts: list[str]) -> list[Completion]:
        out = []
        for prompt in prompts:
            title = prompt.split("title is ")[1].split(";")[0].split("\n")[0]
            self.engines.titles.append(title)
            text = f"{self.engines.wording} {title}{self.engines.ending}"
            ids = (*self.token_ids(text), EOS)
            out.append(Completion(text, tuple(self.token_ids(prompt)), ids, "stop"))
        return out

    def embed(self, prompt_ids, completion_ids):
        vectors = []
        for p, c in zip(prompt_ids, completion_ids, strict=True):
            rng = np.random.default_rng(sum(p) * 31 + sum(c))
            input_emb, gen_emb = rng.normal(size=(2, DIM)).astype(np.float32)
            vectors.append((input_emb, gen_emb))
        return vectors

    def close(self) -> None:
        pass


def write_catalog_dataset(folder: Path, items: int = 24, users: int = 40) -> Path:
    """`items` movies m00.. ("Movie <i>"), `users` users with 6-10 interactions each (a
    deterministic log), a scripted model folder and a genair.toml whose PCA bases (4 + 4 dims)
    and adapter stay below the item count, one recommender run (sasrec, id, one epoch)."""
    rng = random.Random(11)
    genres = ["drama", "comedy", "horror"]
    catalog = ["item_id,title,genre"] + [
        f"m{i:02d},Movie {i},{genres[i % 3]}" for i in range(items)
    ]
    events = ["user_id,item_id,timestamp"]
    for user in range(users):
        liked = rng.sample([i for i in range(items) if i % 3 == user % 3], 4)
        liked += rng.sample(range(items), rng.randint(2, 6))
        for step, item in enumerate(dict.fromkeys(liked)):
            events.append(f"u{user:02d},m{item:02d},{1000 + 100 * user + 10 * step}")
    (folder / "catalog.csv").write_text("\n".join(catalog) + "\n")
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    model = folder / "scripted-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    config = folder / "genair.toml"
    config.write_text(
        files_config(
            k_core=2,
            extra=f"""\
            [llm]
            model = "{model}"
            batch_size = 4
            [pooling]
            input_dims = 4
            gen_dims = 4
            [calibration]
            pairs_per_epoch = 1024
            epochs = 2
            hidden = 8
            max_mean_cosine = 0.95  # a 24-item space is crowded; the guard is tested elsewhere
            [recommenders]
            backbones = ["sasrec"]
            variants = ["id"]
            seeds = [1]
            workers = 1
            [recommenders.model]
            hidden = 8
            max_len = 8
            [recommenders.training]
            loss = "bce"
            batch_size = 128
            max_epochs = 1
            [recommenders.evaluation]
            negatives = 5
            """,
        )
    )
    return config


def set_title(config: Path, item_id: str, title: str) -> None:
    """Change one item's title in the catalog beside `config`."""
    catalog = config.parent / "catalog.csv"
    lines = [
        f"{item_id},{title},drama" if line.startswith(f"{item_id},") else line
        for line in catalog.read_text().splitlines()
    ]
    catalog.write_text("\n".join(lines) + "\n")


def add_item(config: Path, item_id: str, title: str) -> None:
    """Append an item (without interactions) to the catalog beside `config`."""
    catalog = config.parent / "catalog.csv"
    catalog.write_text(catalog.read_text() + f"{item_id},{title},comedy\n")
