"""Smoke tests: the training and evaluation benchmarks run end to end in their --quick configuration.

A module of its own, so the two test workers run it beside tests/test_benchmarks.py.
"""

from test_benchmarks import run_benchmark


def test_train_step_throughput_quick(tmp_path):
    result = run_benchmark("train_step_throughput", tmp_path)
    names = {row["implementation"] for row in result["rows"]}
    assert {"tfnorms_float32", "tfnorms_mixed_bfloat16"} <= names
    assert all(row["images_per_second"] > 0 for row in result["rows"])
    assert result["ratios"]["bf16_vs_fp32"] > 0 and set(result["targets"]) == {"fp32_vs_pytorch", "bf16_vs_fp32"}


def test_eval_throughput_quick(tmp_path):
    result = run_benchmark("eval_throughput", tmp_path)
    names = {row["name"] for row in result["throughput"]["rows"]}
    assert {"pgd20", "apgd_ce", "autoattack_standard_worst_case"} <= names
    assert all(row["images_per_second"] > 0 for row in result["throughput"]["rows"])
    rows = {row["attack"]: row for row in result["agreement"]["rows"]}
    assert {"apgd_ce", "apgd_dlr", "square", "cascade_apgd_ce_apgd_dlr_square"} <= set(rows)
    assert all(0.0 <= row["tfnorms"] <= result["agreement"]["clean_accuracy"] for row in rows.values())
