"""docs/strategies.md's first strategy and its test template, copied as a reader copies them:
the template passes against the strategy and is clean under the project's own lint."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "strategies.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(encoding="utf-8"), re.M | re.S)


def test_the_guides_test_template_passes_against_its_strategy(tmp_path: Path) -> None:
    strategy, template = _python_blocks()[:2]
    (tmp_path / "my_breakout.py").write_text(strategy)
    (tmp_path / "test_breakout.py").write_text(template)

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_the_guides_test_template_is_lint_clean_where_the_guide_puts_it() -> None:
    """Copied into tests/test_breakout.py, the template must not be what fails `make lint`."""
    template = _python_blocks()[1]
    ruff = Path(sys.executable).parent / "ruff"

    result = subprocess.run(
        [str(ruff), "check", "--stdin-filename", "tests/test_breakout.py", "-"],
        cwd=REPO,
        input=template,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
