"""The paper studies in examples/ run end to end in a tiny configuration and write their JSON and PNG files.

Each study defines absl flags of the same names as examples/trades_cifar.py,
so each runs in its own process.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["--epochs=1", "--milestones=", "--batch_size=32", "--train_examples=64", "--eval_examples=32"]


def run_study(script, output_dir, *args):
    # The studies turn on oneDNN, which is slower on these tiny batches (docs/benchmarks.md#onednn).
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", TF_ENABLE_ONEDNN_OPTS="0")
    command = [sys.executable, str(ROOT / "examples" / script), f"--output_dir={output_dir}", *COMMON, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def assert_summaries(rows, metrics, seeds):
    """Every row holds its per-seed rows and their mean and sample standard deviation."""
    for row in rows:
        assert len(row["per_seed"]) == seeds
        for key in metrics:
            values = [r[key] for r in row["per_seed"]]
            assert row["mean"][key] == pytest.approx(np.mean(values))
            if seeds == 1:
                assert row["std"][key] is None  # no spread from one seed (NaN, written as null)
            else:
                assert row["std"][key] == pytest.approx(np.std(values, ddof=1))


def test_width_study(tmp_path):
    out = tmp_path / "width"
    stdout = run_study("width_study.py", out, "--widths=1,2", "--attack_steps=1", "--eval_steps=2",
                       "--lipschitz_examples=8", "--war_warmup_epochs=0", "--beta=2",
                       "--lambda_grid=2", "--stability_examples=16", "--stability_steps=1", "--seeds=1", "--seed=1")
    report = json.loads((out / "results.json").read_text())
    labels = [(r["schedule"], r["width"], r["beta"]) for r in report["runs"]]
    assert labels == [("narrow reference", 1, 2.0), ("fixed", 2, 2.0), ("ratio", 2, 2.0), ("stability", 2, 2.0),
                      ("grid 2", 2, 2.0)]
    # One seed here (compare_norms runs two; test_experiments checks the spreads): per_seed holds seed 1.
    assert_summaries(report["runs"], ["clean_accuracy", "robust_accuracy", "stability", "final_lambda"], seeds=1)
    for row in (r for summary in report["runs"] for r in summary["per_seed"]):
        for key in ("clean_accuracy", "robust_accuracy", "stability"):
            assert 0.0 <= row[key] <= 1.0
        assert row["examples"] == 16  # 32 test points, the first 16 held out for the stability rule
        assert row["robust_accuracy"] >= row["clean_accuracy"] + row["stability"] - 1.0 - 1e-6
    by_label = {r["schedule"]: r for r in report["runs"]}
    assert [r["seed"] for r in by_label["ratio"]["per_seed"]] == [1]
    for rule in ("ratio", "stability"):  # enlarge-only, capped at war_max_factor * beta
        assert all(2.0 <= r["final_lambda"] <= 4.0 * 2.0 for r in by_label[rule]["per_seed"])
    # The grid lambda equal to --beta reuses the fixed run (not trained twice).
    assert by_label["grid 2"]["per_seed"] == [dict(r, schedule="grid 2") for r in by_label["fixed"]["per_seed"]]
    stability_history = report["histories"]["stability_w2_s1"]
    assert len(stability_history["heldout_stability"]) == 1 and len(report["histories"]["narrow_w1_s1"]["lambda"]) == 1
    cost = {r["approach"].split(" ")[0]: r for r in report["cost"]}
    assert set(cost) == {"grid", "fixed", "ratio", "stability"}
    assert [cost[a]["mean"]["runs"] for a in ("grid", "fixed", "ratio", "stability")] == [1, 1, 2, 2]
    assert cost["grid"]["mean"]["minutes"] == pytest.approx(cost["fixed"]["mean"]["minutes"])
    assert cost["ratio"]["mean"]["minutes"] > cost["fixed"]["mean"]["minutes"] > 0
    assert json.loads((out / "reference_run_s1.json").read_text())["history"]["robust_loss"]
    for name in ("width_study.png", "war_lambda.png"):
        assert_png(out / name)
    assert "| stability | 2 | 2.0000 |" in stdout and "one seed" in stdout and "Tuning cost at width 2" in stdout
    assert list((out / "tensorboard_stability_w2_s1" / "train").glob("events.out.tfevents.*"))
