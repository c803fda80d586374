"""PyTorch checkpoints load into tfnorms.models with the same logits (docs/pytorch.md#key-mapping).

Each architecture: the PyTorch definition (tests/torch_models.py) takes two SGD
steps in training mode (so weights and BatchNorm running statistics are no
longer their initial values), its state_dict goes through a ``.pt`` file, and
the Keras model must return the same logits (1e-4) on random inputs, both in
inference mode. Tests that need PyTorch skip with the reason when it is absent.
"""

import importlib.abc
import json
import pathlib
import sys
import warnings

import numpy as np
import pytest

from tfnorms import checkpoints, cli, models

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_REASON = 'loading PyTorch checkpoints needs the optional torch extra: pip install "tfnorms[torch]"'
# (PyTorch definition, Keras builder, input shape (H, W, C)): the smallest configurations that reach
# every mapping rule. WRN-16-1 has identity and projection shortcuts; VGG11 on 64x32 images has a
# 2x1x512 map before its Flatten, so the (C, H, W) -> (H, W, C) row permutation is exercised (and
# H and W cannot be confused); the others have no size or width argument in tfnorms.models.
CASES = {
    "wide_resnet": (lambda tm: tm.WideResNet(16, 1), lambda **kw: models.wide_resnet(16, 1, **kw), (32, 32, 3)),
    "preact_resnet18": (lambda tm: tm.preact_resnet18(), models.preact_resnet18, (16, 16, 3)),
    "resnet18": (lambda tm: tm.resnet18(), models.resnet18, (16, 16, 3)),
    "vgg11": (lambda tm: tm.VGG11(image_size=(64, 32)), models.vgg11, (64, 32, 3)),
    "senet18": (lambda tm: tm.senet18(), models.senet18, (16, 16, 3)),
    "regnetx_200mf": (lambda tm: tm.regnetx_200mf(), models.regnetx_200mf, (16, 16, 3)),
}


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torch.set_num_threads(1)  # the test machines have 2 cores, shared with TensorFlow
    return torch


@pytest.fixture(scope="module")
def tm(torch):
    import torch_models

    return torch_models


def trained(torch, net, input_shape, steps=2, seed=0):
    """``net`` after ``steps`` plain SGD steps on random data, in eval mode.

    Plain SGD by hand: ``torch.optim`` imports TorchDynamo, whose Triton import
    crashes in a process that has loaded TensorFlow with some CUDA builds of torch.
    """
    generator = torch.Generator().manual_seed(seed)
    h, w, c = input_shape
    net.train()
    for _ in range(steps):
        x = torch.rand(4, c, h, w, generator=generator)
        y = torch.randint(0, 10, (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        net.zero_grad()
        loss.backward()
        with torch.no_grad():
            for parameter in net.parameters():
                if parameter.grad is not None:
                    parameter -= 0.05 * parameter.grad
    return net.eval()


def torch_logits(torch, net, x):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def numpy_state_dict(net):
    return {key: value.numpy().copy() for key, value in net.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(torch, tm, tmp_path_factory):
    """``checkpoint(name) -> (trained torch net, path of its saved state_dict)``, built once per architecture."""
    cache = {}

    def make(name):
        if name not in cache:
            net = trained(torch, CASES[name][0](tm), CASES[name][2])
            path = tmp_path_factory.mktemp("checkpoints") / f"{name}.pt"
            torch.save(net.state_dict(), path)
            cache[name] = net, path
        return cache[name]

    return make


def random_images(shape, count=3, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, *shape)).astype("float32")


@pytest.mark.parametrize("name", list(CASES))
def test_logits_equal_pytorch(torch, checkpoint, name):
    net, path = checkpoint(name)
    running_vars = [v.numpy() for k, v in net.state_dict().items() if k.endswith("running_var")]
    assert not all(np.allclose(v, 1.0) for v in running_vars)  # the statistics moved off their defaults
    model = CASES[name][1](input_shape=CASES[name][2])
    report = models.load_torch_weights(model, path)
    assert report.complete and report.architecture == name
    x = random_images(CASES[name][2])
    expected = torch_logits(torch, net, x)
    np.testing.assert_allclose(model(x, training=False).numpy(), expected, rtol=0, atol=1e-4)
    # Every variable of the Keras model came from the checkpoint; BN counters and TRADES' sub_block1 ignored.
    assert len(report.loaded) == len(model.weights)
    unused = sorted(key for key in net.state_dict() if key.startswith("sub_block1."))
    assert bool(unused) == (name == "wide_resnet")
    assert sorted(key for key in report.ignored if key.startswith("sub_block1.")) == unused
    counters = [key for key in report.ignored if not key.startswith("sub_block1.")]
    assert all(key.endswith(".num_batches_tracked") for key in counters)
    assert len(counters) == sum(key.endswith("running_mean") for key in report.loaded)


def test_dataparallel_prefix_and_robustbench_normalization(torch, tm, tmp_path):
    """``module.`` (DataParallel) around RobustBench's ``normalize`` / ``model`` layout; load_classifier builds the normalization."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    net = trained(torch, tm.Normalized(tm.WideResNet(10, 2, sub_block1=False), mean, std), (32, 32, 3))
    path = tmp_path / "robustbench.pth"
    torch.save({f"module.{key}": value for key, value in net.state_dict().items()}, path)
    model = models.load_classifier(path, "wide_resnet", depth=10, width=2)
    x = random_images((32, 32, 3))
    np.testing.assert_allclose(model(x, training=False).numpy(), torch_logits(torch, net, x), rtol=0, atol=1e-4)
    np.testing.assert_allclose(model.get_layer("normalize")(x).numpy(), (x - np.array(mean)) / np.array(std),
                               rtol=1e-5, atol=1e-5)
    model.save(tmp_path / "converted.keras")  # the converted model is an ordinary Keras model from now on
    reloaded = models.load_classifier(tmp_path / "converted.keras")
    np.testing.assert_array_equal(reloaded(x, training=False).numpy(), model(x, training=False).numpy())

    report = models.load_torch_weights(models.wide_resnet(10, 2, normalization=(mean, std)), path)
    assert report.prefixes_removed == ["module.", "model."]
    assert {"normalize.mean", "normalize.std"} <= set(report.loaded)
    # A different normalization in the model is an error, never a silent mismatch.
    with pytest.raises(ValueError, match=r"normalize.mean / normalize.std equal to the model's normalization"):
        models.load_torch_weights(models.wide_resnet(10, 2, normalization=((0.5,) * 3, std)), path)
    # A model without the layer: the keys are unexpected, and the message says how to build it.
    with pytest.raises(ValueError, match=r"(?s)2 unexpected key\(s\): normalize.mean, normalize.std.*normalization="):
        models.load_torch_weights(models.wide_resnet(10, 2), path)


@pytest.fixture(scope="module")
def wrn_state(torch, checkpoint):
    net, _ = checkpoint("wide_resnet")
    return numpy_state_dict(net)


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def test_strict_lists_missing_unexpected_and_misshaped_keys_and_changes_nothing(wrn_state):
    model = models.wide_resnet(16, 1)
    before = weights_of(model)
    broken = dict(wrn_state)
    del broken["block2.layer.0.convShortcut.weight"]
    broken["block1.layer.0.conv3.weight"] = np.zeros((16, 16, 3, 3), "float32")
    broken["fc.weight"] = np.zeros((10, 63), "float32")
    with pytest.raises(ValueError) as error:
        models.load_torch_weights(model, broken)
    message = str(error.value)
    assert "1 missing key(s): block2.layer.0.convShortcut.weight" in message
    assert "1 unexpected key(s): block1.layer.0.conv3.weight" in message
    assert "1 mis-shaped key(s): fc.weight (10, 63) (expected (10, 64))" in message
    for old, new in zip(before, weights_of(model)):
        np.testing.assert_array_equal(old, new)


def test_strict_false_loads_the_rest_warns_and_reports(wrn_state):
    model = models.wide_resnet(16, 1)
    partial = {key: value for key, value in wrn_state.items() if key != "fc.bias"}
    partial["extra.weight"] = np.zeros(3, "float32")
    with pytest.warns(UserWarning, match=r"(?s)some weights were not loaded.*fc\.bias.*extra\.weight"):
        report = models.load_torch_weights(model, partial, strict=False)
    assert (report.missing, report.unexpected, report.mismatched) == (["fc.bias"], ["extra.weight"], {})
    assert not report.complete and "fc.weight" in report.loaded
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), wrn_state["fc.weight"].T)
    np.testing.assert_array_equal(model.get_layer("block1_0_conv1").kernel.numpy(),
                                  wrn_state["block1.layer.0.conv1.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(ValueError, match="argument `strict`"):
        models.load_torch_weights(model, wrn_state, strict="no")


def test_num_batches_tracked_is_ignored_only_on_batch_norms(wrn_state):
    model = models.wide_resnet(16, 1)
    report = models.load_torch_weights(model, wrn_state)
    assert "block1.layer.0.bn1.num_batches_tracked" in report.ignored
    stray = dict(wrn_state, **{"fc.num_batches_tracked": np.array(2)})
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): fc.num_batches_tracked"):
        models.load_torch_weights(model, stray)


def test_wrong_architecture_and_wrong_configuration_are_errors(checkpoint, wrn_state):
    _, resnet_path = checkpoint("resnet18")
    with pytest.raises(ValueError, match=r"(?s)does not match the wide_resnet model.*missing key\(s\).*"
                                         r"unexpected key\(s\): .*layer1\.0\.conv1\.weight.*and \d+ more"):
        models.load_torch_weights(models.wide_resnet(10, 1), resnet_path)
    with pytest.raises(ValueError, match=r"unexpected key\(s\): block1\.layer\.1\.bn1\.weight"):
        models.load_torch_weights(models.wide_resnet(10, 1), wrn_state)  # WRN-16 into WRN-10
    with pytest.raises(ValueError, match=r"mis-shaped key\(s\): block1\.layer\.0\.conv1\.weight \(16, 16, 3, 3\) "
                                         r"\(expected \(32, 16, 3, 3\)\)"):
        models.load_torch_weights(models.wide_resnet(16, 2), wrn_state)  # width 1 into width 2
    with pytest.raises(ValueError, match=r"argument `model`.*tfnorms\.models\.\{wide_resnet"):
        models.load_torch_weights(models.small_cnn(), wrn_state)


class HideTorch(importlib.abc.MetaPathFinder):
    """An import hook under which ``import torch`` fails as if PyTorch were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)")
        # other modules: no spec, so the next finder looks for them


def test_numpy_state_dicts_need_no_torch_and_files_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "meta_path", [HideTorch(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    model = models.wide_resnet(10, 1)
    state = {key: np.zeros(tuple(reversed(w.shape)) if w.ndim == 2 else w.shape, "float32")
             for key, w in zip(("fc.weight", "fc.bias"), model.get_layer("logits").weights)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert models.load_torch_weights(model, state, strict=False).loaded == ["fc.weight", "fc.bias"]
    path = tmp_path / "weights.pt"
    path.write_bytes(b"not read")
    with pytest.raises(ImportError, match=r'pip install "tfnorms\[torch\]" \(tested with torch==2\.13\.0'):
        models.load_torch_weights(model, path)
    with pytest.raises(ImportError, match=r"tfnorms\[torch\]"):
        models.load_classifier(path, "wide_resnet", depth=10, width=1)


def test_bad_state_dicts_and_load_classifier_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"argument `state_dict_or_path`.*\.pt or \.pth file"):
        checkpoints.read_state_dict(str(tmp_path / "weights.h5"))
    with pytest.raises(ValueError, match=r"entries \['epoch'\] are not arrays"):
        checkpoints.read_state_dict({"fc.bias": np.zeros(2), "epoch": 3})
    with pytest.raises(ValueError, match="non-empty mapping"):
        checkpoints.read_state_dict({})
    with pytest.raises(ValueError, match=r"argument `architecture`.*'wide_resnet', 'preact_resnet18'.*'vgg11'"):
        models.load_classifier(tmp_path / "model_cifar_wrn.pt")
    with pytest.raises(ValueError, match=r"argument `architecture`.*one of"):
        models.load_classifier(tmp_path / "model_cifar_wrn.pt", "wrn")
    with pytest.raises(ValueError, match=r"argument `path`.*\.keras, \.pt or \.pth"):
        models.load_classifier(tmp_path / "model.h5")
    with pytest.raises(ValueError, match=r"argument `architecture`.*None for a \.keras file"):
        models.load_classifier(tmp_path / "model.keras", "vgg11")
    with pytest.raises(ValueError, match=r"argument `builder_kwargs`"):
        models.load_classifier(tmp_path / "model.keras", depth=34)


def test_the_evaluate_command_takes_a_pytorch_checkpoint(torch, tm, tmp_path, capsys):
    """``tfnorms evaluate --architecture`` (examples/evaluate.py shares its loader): digits through a WRN-10-1."""
    net = tm.WideResNet(10, 1, in_channels=1)
    path = tmp_path / "wrn.pt"
    torch.save(trained(torch, net, (16, 16, 1)).state_dict(), path)
    output = tmp_path / "evaluation.json"
    common = [str(path), "--architecture=wide_resnet", "--depth=10", "--width=1"]
    assert cli.main(["evaluate", *common, "--dataset=digits", "--image_size=16", "--eps=0.05", "--examples=8",
                     "--steps=1", "--attack=pgd", f"--output={output}", "--seed=0", "--quiet"]) == 0
    report = json.loads(output.read_text())
    assert report["architecture"] == "wide_resnet" and report["n_points"] == 8
    assert 0 <= report["results"]["pgd1"]["robust_accuracy"] <= report["results"]["clean_accuracy"]
    capsys.readouterr()
    assert cli.main(["norms", *common, "--dataset=digits", "--image_size=16", "--ord=1", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert {layer["path"] for layer in table["layers"]} >= {"conv1", "block1_0_conv1", "logits"}
    assert cli.main(["norms", *common]) == 2  # built for CIFAR-10 by default: a clear mismatch, not a guess
    assert "conv1.weight (16, 1, 3, 3) (expected (16, 3, 3, 3))" in capsys.readouterr().err
    assert cli.main(["norms", *common[:1], "--depth=10"]) == 2  # --depth without --architecture
    assert "depth" in capsys.readouterr().err
