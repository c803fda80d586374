"""The norm studies in examples/ run end to end in a tiny configuration (a module of its own, so the
test workers run it beside the width study in tests/test_studies.py)."""

import json

import pytest
from test_studies import assert_png, assert_summaries, run_study


def test_norm_regularization_study(tmp_path):
    out = tmp_path / "norm_reg"
    stdout = run_study("norm_regularization.py", out, "--width=4", "--factors=1e-3", "--clip_values=0.5",
                       "--svc_every=1", "--attack=pgd", "--eval_steps=2", "--methods=none,svc", "--seeds=1")
    report = json.loads((out / "results.json").read_text())
    labels = [r["run"] for r in report["runs"]]
    assert labels == ["none", "svc 0.5"]  # norm decay runs the same code path as training elsewhere
    # One seed (compare_norms runs two): the spread of a single value is undefined, written as null.
    assert all(len(row["per_seed"]) == 1 and row["mean"]["clean_accuracy"] == row["per_seed"][0]["clean_accuracy"]
               and row["std"]["clean_accuracy"] is None for row in report["runs"])
    for row in (r for summary in report["runs"] for r in summary["per_seed"]):
        assert row["robust_accuracy"] <= row["clean_accuracy"] + 1e-6
        assert row["examples"] == 32
    norms = report["layer_norms"]["l1"]
    assert set(norms) == set(labels)
    assert len(norms["none"]["mean"]) == 7  # 3 conv + 3 BN + 1 dense in small_cnn
    # SVC clipped every step to 0.5: in every seed its conv layers end far below the unregularised ones.
    conv = [path for path in norms["none"]["mean"] if path.endswith(("conv1", "conv2", "conv3"))]
    for svc, none in zip(norms["svc 0.5"]["per_seed"], norms["none"]["per_seed"]):
        assert max(svc[p] for p in conv) < min(none[p] for p in conv)
    assert " ± " not in stdout  # one seed: the mean alone
    for name in ("layer_norms_l1.png", "layer_norms_linf.png", "accuracy.png"):
        assert_png(out / name)


def test_compare_norms_trains_then_reloads(tmp_path):
    out = tmp_path / "compare"
    run_study("compare_norms.py", out, "--model=small_cnn", "--width=4", "--methods=natural,trades", "--attack_steps=1",
              "--apgd_iter=2", "--attack=pgd", "--eval_steps=2", "--seeds=2")
    report = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in report["runs"]] == ["natural", "trades"]
    assert_summaries(report["runs"], ["clean_accuracy", "median_l1", "log10_prod_l1"], seeds=2)
    assert [len(report["layer_norms_l1"][m]["per_seed"]) for m in ("natural", "trades")] == [2, 2]
    for name in ("layer_norms_l1.png", "norm_distribution.png"):
        assert_png(out / name)

    again = tmp_path / "reloaded"
    models = f"nat={out / 'natural_s1.keras'},{out / 'trades_s1.keras'}"
    run_study("compare_norms.py", again, f"--models={models}", "--attack=pgd", "--eval_steps=2", "--seeds=1")
    reloaded = json.loads((again / "results.json").read_text())
    assert [r["model"] for r in reloaded["runs"]] == ["nat", "trades_s1"]
    for before, after in zip(report["runs"], reloaded["runs"]):
        assert after["mean"]["clean_accuracy"] == pytest.approx(before["per_seed"][1]["clean_accuracy"])
        assert after["mean"]["log10_prod_l1"] == pytest.approx(before["per_seed"][1]["log10_prod_l1"], rel=1e-5)
    assert_png(again / "norm_distribution.png")
