"""The notebooks are the source of truth: the package must be exactly what nbdev_export makes of them,
and the notebooks must already be clean (what nbdev_clean would write)."""
import shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _copy_project(dst: Path):
    for name in ('settings.ini', 'setup.py', 'README.md'): shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / 'nbs', dst / 'nbs')
    shutil.copytree(ROOT / 'attrib', dst / 'attrib', ignore=shutil.ignore_patterns('__pycache__'))


def _tree(p: Path):
    return {f.relative_to(p).as_posix(): f.read_bytes() for f in sorted(p.rglob('*')) if f.is_file() and '__pycache__' not in f.parts}


def _run(args, cwd):
    r = subprocess.run([sys.executable, '-c', args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_package_matches_notebooks(tmp_path):
    _copy_project(tmp_path)
    before = _tree(tmp_path / 'attrib')
    _run('from nbdev.doclinks import nbdev_export; nbdev_export()', tmp_path)
    after = _tree(tmp_path / 'attrib')
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f'attrib/ differs from nbs/ after nbdev_export: {changed}. Edit the notebooks and run nbdev_export.'


def test_notebooks_are_clean(tmp_path):
    _copy_project(tmp_path)
    before = _tree(tmp_path / 'nbs')
    _run('from nbdev.clean import nbdev_clean; nbdev_clean()', tmp_path)
    after = _tree(tmp_path / 'nbs')
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f'notebooks not clean: {changed}. Run nbdev_clean.'
