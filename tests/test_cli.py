"""The ``tfnorms`` command: the installed console script on a tiny saved model and the embedded digits.

The two runs of the installed script (``norms --json`` and ``evaluate``) start
together, so their TensorFlow start-ups overlap; argument errors, missing and
corrupt model files, ``--help`` and ``python -m tfnorms`` run in this process
(the same ``main``, without another TensorFlow start-up).
"""

import json
import os
import runpy
import subprocess
import sys

import keras
import numpy as np
import pytest
from norm_bruteforce import conv_matrix, l1, l2, linf

from tfnorms import cli, experiments

TIMEOUT = 300


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny chain (conv, BN, max pool, dense) on 8x8 digits, saved as .keras."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="fc"),
    ], name="tiny")
    model.layers[1].moving_variance.assign(np.linspace(0.5, 2.0, 3))
    path = tmp_path_factory.mktemp("cli") / "tiny.keras"
    model.save(path)
    return path, model


def _installed_command():
    command = os.path.join(os.path.dirname(sys.executable), "tfnorms")
    if not os.path.exists(command):
        pytest.fail(f"the console script {command} is missing: reinstall the package (pip install -e .)")
    return command


def test_installed_command_prints_norms_as_json_and_evaluates_with_a_report(saved, tmp_path):
    path, model = saved
    command = _installed_command()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    report_path = tmp_path / "report.json"
    runs = {
        "norms": [command, "norms", str(path), "--json"],
        "evaluate": [command, "evaluate", str(path), "--dataset=digits", "--eps=0.1", "--examples=12",
                     "--attack=pgd,cw", "--steps=2", "--seed=0", "--quiet", f"--output={report_path}"],
    }
    processes = {name: subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for name, args in runs.items()}
    try:
        outputs = {name: process.communicate(timeout=TIMEOUT) for name, process in processes.items()}
    finally:
        for process in processes.values():
            process.kill()
    codes = {name: process.returncode for name, process in processes.items()}
    assert codes == {"norms": 0, "evaluate": 0}, outputs

    # norms: each layer's norms against the dense matrix of its map, products, caveats of a chain.
    table = json.loads(outputs["norms"][0])
    assert [row["path"] for row in table["layers"]] == ["conv", "bn", "fc"]
    conv, bn, fc = (model.get_layer(name) for name in ("conv", "bn", "fc"))
    bn_scale = np.abs(bn.gamma.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    matrices = {"conv": conv_matrix(conv.kernel.numpy(), (8, 8), strides=2), "bn": np.diag(bn_scale),
                "fc": fc.kernel.numpy().T}
    for row in table["layers"]:
        matrix = matrices[row["path"]]
        np.testing.assert_allclose([row["l1"], row["linf"]], [l1(matrix), linf(matrix)], rtol=1e-5)
        # Gram iteration: a certified bound, tight for Dense; BatchNorm exact.
        assert l2(matrix) * (1 - 1e-6) <= row["l2"] <= l2(matrix) * (1.5 if row["path"] == "conv" else 1.01)
        assert row["l2_kind"] == ("exact" if row["path"] == "bn" else "upper bound")
    assert table["layers"][0]["geometry"] == {"kernel": [3, 3, 1, 3], "input_shape": [8, 8], "strides": [2, 2],
                                              "padding": "same", "dilation_rate": [1, 1], "groups": 1}
    for name in ("l1", "linf", "l2"):
        np.testing.assert_allclose(table["products"][name]["value"],
                                   np.prod([row[name] for row in table["layers"]]), rtol=1e-6)
    assert table["products"]["linf"] == dict(table["products"]["linf"], upper_bound=True, caveats=[])
    assert table["products"]["l2"] == dict(table["products"]["l2"], upper_bound=True, caveats=[])
    power = experiments.norm_table(model, spectral="power")  # the conv's spectral norm: an estimate from below
    for row in power["layers"]:
        np.testing.assert_allclose(row["l2"], l2(matrices[row["path"].split("/")[-1]]), rtol=1e-3)
    assert [row["l2_kind"] for row in power["layers"]] == ["estimate from below", "exact", "exact"]
    assert power["products"]["l2"]["upper_bound"] is False

    # evaluate: the report of tfnorms.experiments.robustness_report on the first 12 test digits.
    report = json.loads(report_path.read_text())
    assert (report["n_points"], report["dataset"], report["eps"], report["seed"]) == (12, "digits", 0.1, 0)
    results = report["results"]
    assert set(results) == {"clean_accuracy", "pgd2", "cw2"}
    x, y = experiments.load_arrays("digits", examples=12, model=model)
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))
    assert results["clean_accuracy"] == pytest.approx(clean)
    worst = report["robustness"]["robust_accuracy"]
    assert worst <= min(results["pgd2"]["robust_accuracy"], results["cw2"]["robust_accuracy"]) <= clean
    assert "cw2 (worst)" in outputs["evaluate"][0] and f"wrote {report_path}" in outputs["evaluate"][0]


def test_the_products_bound_the_chains_lipschitz_constant_and_the_table_prints_them(saved, capsys):
    path, model = saved
    assert cli.main(["norms", str(path), "--ord=inf,1"]) == 0
    text = capsys.readouterr().out
    assert "product over the network" in text and "linf product: an upper bound" in text and "l2" not in text
    table = experiments.norm_table(model, ords=(1, np.inf))
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    dx = rng.normal(size=x.shape).astype("float32") * 1e-2
    dy = model(x + dx, training=False).numpy() - model(x, training=False).numpy()
    for name, axis_norm in (("linf", lambda v: np.abs(v).max(axis=1)), ("l1", lambda v: np.abs(v).sum(axis=1))):
        ratio = axis_norm(dy.reshape(64, -1)) / axis_norm(dx.reshape(64, -1))
        assert ratio.max() <= table["products"][name]["value"] * (1 + 1e-4)


def test_residual_networks_get_no_lipschitz_claim():
    inputs = keras.Input((6, 6, 2))
    branch = keras.layers.Conv2D(2, 3, padding="same", name="branch")(inputs)
    outputs = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(keras.layers.Add(name="add")([inputs, branch])))
    table = experiments.norm_table(keras.Model(inputs, outputs), ords=(1,))
    product = table["products"]["l1"]
    assert product["upper_bound"] is False and "add" in product["caveats"][0]


def test_help_lists_the_subcommands_and_python_m_runs_the_same_main(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "{norms,evaluate}" in capsys.readouterr().out
    for command in ("norms", "evaluate"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert f"usage: tfnorms {command}" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["tfnorms", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("tfnorms", run_name="__main__")
    assert exit_.value.code == 0 and "usage: tfnorms" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["norms", "{model}", "--ord=3"], "argument `--ord`. Expected comma-separated norms among 1, inf, 2"),
        (["evaluate", "{model}", "--dataset=digits", "--eps=-1"], "argument `--eps`. Expected a finite number > 0"),
        (["evaluate", "{model}", "--dataset=imagenet", "--eps=0.1"], "argument `--dataset`. Expected one of"),
        (["evaluate", "{model}", "--dataset=digits", "--eps=0.1", "--attack=fgsm"], "argument `--attack`"),
        (["evaluate", "{model}", "--dataset=digits", "--eps=0.1", "--examples=-2"], "argument `--examples`"),
        (["evaluate", "{model}", "--eps=0.1"], "the following arguments are required: --dataset"),
        (["norms", "{missing}"], "cannot read model"),
        (["norms", "{corrupt}"], "cannot load model"),
        (["evaluate", "{model}", "--dataset=digits", "--image_size=6", "--eps=0.1"], "cannot evaluate"),
    ],
)
def test_bad_arguments_and_models_end_with_a_one_line_error_and_exit_code_2(saved, tmp_path, capsys, args, message):
    path, _ = saved
    (tmp_path / "corrupt.keras").write_bytes(b"not a zip file")
    args = [a.format(model=path, missing=tmp_path / "missing.keras", corrupt=tmp_path / "corrupt.keras") for a in args]
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert "Traceback" not in stderr
    assert error.startswith(f"tfnorms {args[0]}: error: ") and message in error
