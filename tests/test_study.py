"""scripts/study.py: the sweep's steps, and its summary chosen on validation only."""

import importlib.util
from pathlib import Path

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
