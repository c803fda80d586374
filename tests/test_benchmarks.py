"""Smoke tests: the benchmarks run end to end in their --quick configuration."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_benchmark(name, tmp_path, *extra):
    output = tmp_path / f"{name}.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", f"--output={output}", *extra],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )
    result = json.loads(output.read_text())
    # Ratios depend on the CPU and on the load from other processes: every benchmark records both.
    assert {"cpu_model", "cpus", "load_average_before", "load_average_after"} <= set(result["machine"])
    assert result["machine"]["cpu_model"]
    return result


def test_norm_speed_quick(tmp_path):
    result = run_benchmark("norm_speed", tmp_path)
    methods = {row["method"] for row in result["rows"]}
    assert {"ours_l1", "ours_linf", "fft_svd", "power_iteration", "ours_all_l1_linf"} <= methods
    assert all(row["median_seconds"] > 0 for row in result["rows"])
    near_degenerate = [row for row in result["spectral_block"] if row["operator"].startswith("2x3")]
    assert [row["block_size"] for row in near_degenerate] == [1, 4]
    assert near_degenerate[1]["relative_error"] < 1e-5 < near_degenerate[0]["relative_error"]
    peer = {(row["ord"], row["method"]) for row in result["peer"]}
    assert {("l1", "pytorch_official_formulation"), ("linf", "memory_floor_sum_abs")} <= peer
    assert all(row["max_relative_difference_to_pytorch"] < 1e-5 for row in result["peer"])
    # Bounds over a lower bound; pruning never lowers the bound.
    assert all(row["gap_upper_bound"] >= 0 for row in result["gram"])
    assert all(row["pruned_gap_upper_bound"] >= row["gap_upper_bound"] - 1e-6 for row in result["gram"])
    assert result["gram_model"]["median_gap_upper_bound"] >= 0 and result["per_call"]


def test_regularizer_overhead_quick(tmp_path):
    result = run_benchmark("regularizer_overhead", tmp_path)
    step_names = {row["name"] for row in result["step_time"]}
    assert {"none", "l2", "norm_decay_l1", "norm_decay_linf", "norm_decay_momentum"} <= step_names
    assert {row["name"] for row in result["svc_pass"]} >= {"reference", "ours_gram"}
    assert all(row["median_seconds"] > 0 for row in result["step_time"] + result["svc_pass"])
