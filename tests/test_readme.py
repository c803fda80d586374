"""The README's usage example runs as written."""

import pathlib
import re
import warnings

import tfnorms


def test_readme_python_examples_run():
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        with warnings.catch_warnings():
            # Exact penalties with no extra call: an unbound regularizer would warn.
            warnings.simplefilter("error", tfnorms.UnboundWarning)
            exec(compile(block, str(readme), "exec"), {"__name__": "readme_example"})


def test_readme_lists_every_flag_of_the_main_example(trades_cifar):
    root = pathlib.Path(__file__).resolve().parents[1]
    flags = trades_cifar.EXAMPLE_FLAGS  # its own and those shared through tfnorms.experiments.define_flags
    assert len(flags) > 20
    readme = (root / "README.md").read_text()
    missing = [name for name in flags if f"`--{name}`" not in readme]
    assert not missing, f"flags missing from the README: {missing}"


def test_ci_runs_the_readmes_test_command():
    root = pathlib.Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    command = re.search(r"Tests \(.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    ci = (root / ".ci" / "run").read_text()
    steps = [step.strip() for step in command.split("&&")][2:]  # after creating and activating the venv
    assert steps and all(step in ci for step in steps), (steps, ci)
