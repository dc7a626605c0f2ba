"""Every numbered notebook in nbs/ is a test: its example cells assert the behaviour they show.

Cells flagged `#| slow` are skipped unless `--run-slow` is given (CI skips them)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('[0-9]*.ipynb'))


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(nb, request):
    from nbdev.test import test_nb
    force = ['slow'] if request.config.getoption('--run-slow') else None
    ok, secs = test_nb(nb, skip_flags=['slow'], force_flags=force, showerr=True)
    assert ok, f'{nb.name}: a cell failed (traceback above, in the captured stderr)'
