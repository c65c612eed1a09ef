"""Every table of a whole pipeline run on a small generated dataset, pinned to the digests the
code wrote before genair_core and storage were untangled: a refactor must not change a result.

The LLM is a scripted engine (deterministic text and vectors); everything else is the real code
path: ingest, split, co-occurrence, archetypes, pooling, negatives, three backbones × three item
representations, results. Columns that say when or where a row was written (timestamps, flow run
ids, source paths, seconds, the run key) are left out of the digests.

To re-pin after a deliberate change of results: GENAIR_WRITE_GOLDEN=1 pytest this file, and say
why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest
from scripted_pipeline import TitleEngines, scripted_pipeline
from small_dataset import files_config

from storage.store import Store

pytestmark = pytest.mark.usefixtures("prefect_harness")
GOLDEN = Path(__file__).parent / "data" / "golden_small_pipeline.json"
VOLATILE = {"source", "created_at", "run_id", "run_key", "seconds", "flow_run_id", "updated_at"}


def write_dataset(folder: Path) -> Path:
    """40 movies, 60 users with 6-12 interactions each, one unknown item: a deterministic log."""
    rng = random.Random(7)
    genres = ["drama", "comedy", "horror", "sci-fi"]
    catalog = ["item_id,title,genre"] + [
        f"m{i:02d},Movie {i} {genres[i % 4].title()},{genres[i % 4]}" for i in range(40)
    ]
    events = ["user_id,item_id,timestamp"]
    for user in range(60):
        favourite = user % 4
        items = rng.sample([i for i in range(40) if i % 4 == favourite], 5)
        items += rng.sample(range(40), rng.randint(1, 7))
        for step, item in enumerate(dict.fromkeys(items)):
            events.append(f"u{user:02d},m{item:02d},{1000 + 100 * user + 10 * step}")
    events.append("u00,zz,99999")
    (folder / "catalog.csv").write_text("\n".join(catalog) + "\n")
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    model = folder / "golden-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    config = folder / "genair.toml"
    config.write_text(
        files_config(
            k_core=3,
            extra=f"""\
            [llm]
            model = "{model}"
            batch_size = 16
            [pooling]
            input_dims = 6
            gen_dims = 4
            [calibration]
            pairs_per_epoch = 8192
            [recommenders]
            backbones = ["sasrec", "bert4rec", "gru4rec"]
            variants = ["id", "llm", "genair"]
            seeds = [3]
            workers = 1
            [recommenders.model]
            hidden = 8
            max_len = 12
            [recommenders.training]
            max_epochs = 3
            patience = 3
            alpha = 0.1
            [recommenders.evaluation]
            negatives = 5
            [recommenders.per_backbone.bert4rec.training]
            loss = "ce"
            batch_size = 16
            """,
        )
    )
    return config


def table_digests(root: Path) -> dict[str, str]:
    """A digest of each table's rows (order-free, volatile columns left out), and of the report."""
    store = Store(root)
    digests = {}
    for name in sorted({*store.existing_tables(), *store.existing_datasets()}):
        table = (
            store.read_table(name) if name in store.existing_tables() else store.read_parts(name)
        )
        table = table.drop_columns([c for c in table.column_names if c in VOLATILE])
        rows = sorted(json.dumps(row, sort_keys=True, default=str) for row in table.to_pylist())
        digests[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    report = root / "reports" / "recommenders.md"
    digests["reports/recommenders.md"] = hashlib.sha256(report.read_bytes()).hexdigest()
    return digests


@pytest.fixture
def golden_run(tmp_path: Path) -> Path:
    config = write_dataset(tmp_path)
    # Text from the title, vectors from a hash of the token ids: the same on every machine.
    scripted_pipeline(str(config), TitleEngines(ending=" and quiet evenings"))
    return config.parent / "data"


def test_every_table_matches_the_pinned_digests(golden_run: Path) -> None:
    digests = table_digests(golden_run)
    if os.environ.get("GENAIR_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
    assert digests == json.loads(GOLDEN.read_text())
