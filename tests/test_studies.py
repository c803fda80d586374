"""The paper studies in examples/ run end to end in a tiny configuration and write their JSON and PNG files.

Each study defines absl flags of the same names as examples/trades_cifar.py,
so each runs in its own process.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = ["--epochs=1", "--milestones=", "--batch_size=32", "--train_examples=64", "--eval_examples=32"]


def run_study(script, output_dir, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg")
    command = [sys.executable, str(ROOT / "examples" / script), f"--output_dir={output_dir}", *COMMON, *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_width_study(tmp_path):
    out = tmp_path / "width"
    stdout = run_study("width_study.py", out, "--widths=1,2", "--attack_steps=1", "--eval_steps=2",
                       "--lipschitz_examples=8", "--war_warmup_epochs=0", "--beta=2")
    report = json.loads((out / "results.json").read_text())
    assert [r["width"] for r in report["fixed"]] == [1, 2]
    assert [r["width"] for r in report["war"]] == [1, 2]
    for row in report["fixed"] + report["war"]:
        for key in ("clean_accuracy", "robust_accuracy", "stability"):
            assert 0.0 <= row[key] <= 1.0
        assert row["local_lipschitz"] >= 0.0
        assert row["robust_accuracy"] >= row["clean_accuracy"] + row["stability"] - 1.0 - 1e-6
    wide_war = report["war"][1]
    assert wide_war["updates"], "the WAR schedule never updated lambda"
    assert 2.0 <= wide_war["final_lambda"] <= 4.0 * 2.0  # enlarge-only, capped at war_max_factor * beta
    assert report["histories"]["war_w2"]["lambda"][-1] == pytest.approx(wide_war["final_lambda"])
    reference = json.loads((out / "reference_run.json").read_text())
    assert reference["beta"] == 2.0 and reference["history"]["robust_loss"]
    for name in ("width_study.png", "war_lambda.png"):
        assert_png(out / name)
    assert "| WAR (ratio-matching) | 2 |" in stdout
    assert list((out / "tensorboard_war_w2" / "train").glob("events.out.tfevents.*"))


def test_norm_regularization_study(tmp_path):
    out = tmp_path / "norm_reg"
    run_study("norm_regularization.py", out, "--width=4", "--factors=1e-3", "--clip_values=0.5", "--svc_every=1",
              "--apgd_iter=2", "--eval_steps=2")
    report = json.loads((out / "results.json").read_text())
    labels = [r["run"] for r in report["runs"]]
    assert labels == ["none", "nd_l1 0.001", "nd_linf 0.001", "wd 0.001", "svc 0.5"]
    for row in report["runs"]:
        assert row["robust_accuracy"] <= row["clean_accuracy"] + 1e-6
        assert row["examples"] == 32
    norms = report["layer_norms"]["l1"]
    assert set(norms) == set(labels)
    assert len(norms["none"]) == 7  # 3 conv + 3 BN + 1 dense in small_cnn
    # SVC clipped every step to 0.5: its conv layers end far below the unregularised ones.
    conv = [path for path in norms["none"] if path.endswith(("conv1", "conv2", "conv3"))]
    assert max(norms["svc 0.5"][p] for p in conv) < min(norms["none"][p] for p in conv)
    for name in ("layer_norms_l1.png", "layer_norms_linf.png", "accuracy.png"):
        assert_png(out / name)


def test_compare_norms_trains_then_reloads(tmp_path):
    out = tmp_path / "compare"
    run_study("compare_norms.py", out, "--width=4", "--methods=natural,trades", "--attack_steps=1",
              "--apgd_iter=2", "--attack=pgd", "--eval_steps=2")
    report = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in report["runs"]] == ["natural", "trades"]
    for name in ("layer_norms_l1.png", "norm_distribution.png"):
        assert_png(out / name)

    again = tmp_path / "reloaded"
    models = f"nat={out / 'natural.keras'},{out / 'trades.keras'}"
    run_study("compare_norms.py", again, f"--models={models}", "--attack=pgd", "--eval_steps=2")
    reloaded = json.loads((again / "results.json").read_text())
    assert [r["model"] for r in reloaded["runs"]] == ["nat", "trades"]
    for before, after in zip(report["runs"], reloaded["runs"]):
        assert after["clean_accuracy"] == pytest.approx(before["clean_accuracy"])
        assert after["log10_prod_l1"] == pytest.approx(before["log10_prod_l1"], rel=1e-5)
    assert_png(again / "norm_distribution.png")
