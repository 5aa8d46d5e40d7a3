"""The README's API tour runs as written and its numbers hold."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)


def test_api_tour_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}  # shared: later blocks may build on earlier ones
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = [float(line) for line in capsys.readouterr().out.split()]
    assert round(printed[0], 1) == 56.8
    assert round(printed[1], 2) == 3.78
    assert namespace["y"].shape == (1, 256, 256, 3)
