"""scripts/study.py: the sweep's steps, and its summary chosen on validation only."""

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", REPO / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweep_gives_every_alpha_and_tau_its_own_tag(study):
    steps = study.alpha_steps()
    assert len(steps) == len({tag for tag, _ in steps}) == 10
    tag, env = steps[0]
    assert tag == "a0.0001-t1"
    assert env["GENAIR_RECOMMENDERS__TRAINING__ALPHA"] == "0.0001"
    assert env["GENAIR_RECOMMENDERS__TRAINING__TAU"] == "1"
    assert env["GENAIR_RECOMMENDERS__VARIANTS"] == '["genair"]'


def write_run(store: Store, name: str, valid: float, test: float, cal: float) -> None:
    columns = {
        "run_key": name,
        "dataset": "d",
        "backbone": name.split("-")[0],
        "variant": "genair",
        "seed": 44,
        "loss": "ce",
    }
    store.write_part(
        "metrics",
        name,
        "final",
        [
            {
                **columns,
                "protocol": "full",
                "split": split,
                "group": "all",
                "metric": "ndcg@10",
                "value": value,
                "users": 10,
            }
            for split, value in (("valid", valid), ("test", test))
        ],
    )
    log = {"train_loss": 5.0, "rec_loss": 5.0, "valid_hr@10": 0.1, "seconds": 1.0}
    store.write_part(
        "training_log",
        name,
        "final",
        [
            {**columns, **log, "epoch": 1, "cal_loss": -9.0, "valid_ndcg@10": valid / 2},
            {**columns, **log, "epoch": 2, "cal_loss": cal, "valid_ndcg@10": valid},
        ],
    )


def test_the_summary_picks_each_backbone_on_validation_not_test(study, tmp_path):
    store = Store(tmp_path)
    write_run(store, "sasrec-genair-ce-s44-a0.01-t1", valid=0.12, test=0.05, cal=-1.0)
    write_run(store, "sasrec-genair-ce-s44-a1-t4", valid=0.10, test=0.09, cal=-0.5)
    write_run(store, "sasrec-genair-ce-s44", valid=0.50, test=0.50, cal=-1.0)  # not the sweep's
    summary = study.alpha_summary(tmp_path)
    rows = [line for line in summary.splitlines() if line.startswith("| sasrec")]
    assert rows == [
        "| sasrec | 0.01 | 1 | 0.1200 | 0.0500 | 2 / 2 | 5.000 | -1.000 | 2.00e-03 |",
        "| sasrec | 1 | 4 | 0.1000 | 0.0900 | 2 / 2 | 5.000 | -0.500 | 1.00e-01 |",
    ]
    assert "Best on validation, sasrec: α = 0.01, τ = 1 (0.1200)" in summary


def write_table_run(store: Store, run: str, valid: float, hits: np.ndarray) -> None:
    """A table run: its validation NDCG@10, and test ranks 0 (a hit) where `hits`, else 50."""
    backbone, variant = run.split("-ce-")[0].split("-", 1)
    columns = {
        "run_key": run,
        "dataset": "d",
        "backbone": backbone,
        "variant": variant,
        "seed": 44,
        "loss": "ce",
    }
    metric = {"protocol": "full", "split": "valid", "group": "all", "metric": "ndcg@10"}
    store.write_part("metrics", run, "final", [{**columns, **metric, "value": valid, "users": 1}])
    ranks = [
        {
            **columns,
            "split": "test",
            "user_idx": user,
            "item_idx": 1,
            "rank_full": 0 if hit else 50,
            "rank_sampled": 0,
        }
        for user, hit in enumerate(hits)
    ]
    store.write_part("eval_ranks", run, "final", ranks)


def test_the_verdict_picks_the_variant_on_validation_and_tests_the_tail_apart(study, tmp_path):
    # 60 users with 3 training items, one validation and one test item each. Item 9 is seen
    # once in training, item 5 by everyone, so the 20 users whose test item is 9 are the tail.
    users, n_items = 60, 9
    rows = []
    for user in range(users):
        items = [9 if user == 59 else 1, 2, 5, 4, 9 if user < 20 else 5]
        for position, item in enumerate(items):
            split = ("train", "train", "train", "valid", "test")[position]
            rows.append((user, position, item, split))
    user, position, item, split = (list(column) for column in zip(*rows, strict=True))
    store = Store(tmp_path)
    store.write_table(
        "sequences",
        pa.table(
            {
                "user_idx": user,
                "position": position,
                "item_idx": item,
                "timestamp": pa.array([0] * len(user), pa.timestamp("s", tz="UTC")),
                "rating": pa.array([None] * len(user), pa.float32()),
                "split": split,
            }
        ),
    )
    store.write_table(
        "item_index",
        pa.table(
            {
                "item_idx": list(range(1, n_items + 1)),
                "item_id": [str(i) for i in range(1, n_items + 1)],
                "n_interactions": [1] * n_items,
            }
        ),
    )
    tail = np.arange(users) < 20
    everyone = np.ones(users, bool)
    id_hits = (np.arange(users) < 5) | (~tail & (np.arange(users) < 40))  # 5 of the tail
    write_table_run(store, "sasrec-id-ce-s44", 0.10, hits=id_hits)
    # Best on test (every user a hit) but not on validation: never chosen.
    write_table_run(store, "sasrec-genair-id-ce-s44", 0.11, hits=everyone)
    # Chosen on validation: the id model's hits plus the rest of the tail.
    write_table_run(store, "sasrec-genair-warm-ce-s44", 0.12, hits=np.arange(users) < 40)
    write_table_run(store, "sasrec-genair-ce-s44-a1-t1", 0.50, hits=everyone)  # a sweep run
    verdict = study.table_verdict(tmp_path).splitlines()
    [row] = [line for line in verdict if line.startswith("| sasrec")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "genair-warm (0.1200, 1)"
    assert cells[2] == "0.4167 → 0.6667"  # 25 of 60 users hit, then 40
    assert cells[3].startswith("+60.0%, p = 0.000")
    assert cells[4] == "0.2500 → 1.0000"  # the tail: 5 of 20, then all
    assert cells[5].startswith("+300.0%, p = 0.000")
    assert cells[6] == "yes"
