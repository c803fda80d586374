"""The README's usage example runs as written."""

import pathlib
import re


def test_readme_python_examples_run():
    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert blocks, "README has no python example"
    for block in blocks:
        exec(compile(block, str(readme), "exec"), {"__name__": "readme_example"})
