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


def _canon(name: str) -> str:
    import re
    return re.sub(r'[-_.]+', '-', name).lower()


def _requirement_names():
    import re, shlex
    from configparser import ConfigParser
    cfg = ConfigParser(delimiters=['=']); cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    reqs = shlex.split(cfg['DEFAULT']['requirements']) + shlex.split(cfg['DEFAULT']['dev_requirements'])
    return {_canon(re.match(r'[A-Za-z0-9_.-]+', r).group(0)) for r in reqs}


def _lock_pins():
    import re
    pins = {}
    for line in (ROOT / 'requirements-lock.txt').read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'): continue
        m = re.fullmatch(r'([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)', line)
        assert m, f'requirements-lock.txt: not an exact pin: {line!r}'
        pins[_canon(m.group(1))] = m.group(2)
    return pins


def test_lock_covers_every_requirement():
    "Every direct requirement (settings.ini, dev extras, the --no-deps weights package) is pinned exactly in the lock."
    sys.path.insert(0, str(ROOT))
    try: import tasks
    finally: sys.path.remove(str(ROOT))
    pins = _lock_pins()
    missing = sorted((_requirement_names() | {_canon(n) for n in tasks.NO_DEPS}) - set(pins))
    assert not missing, f'requirements-lock.txt does not pin {missing}: run `python3 tasks.py lock`'
    assert 'attrib' not in pins


def test_lock_is_what_is_installed():
    "The environment the suite runs in is the locked one (skipped after `tasks.py setup --latest`, which ignores it)."
    import pytest
    from importlib.metadata import version, PackageNotFoundError
    stamp = ROOT / '.venv' / '.attrib-installed'
    if not stamp.exists() or Path(sys.prefix).resolve() != (ROOT / '.venv').resolve(): pytest.skip('not the project .venv')
    sys.path.insert(0, str(ROOT))
    try: import tasks
    finally: sys.path.remove(str(ROOT))
    if stamp.read_text() != tasks._fingerprint(False): pytest.skip('set up with --latest (or out of date)')
    pins = _lock_pins()
    wrong = {}
    for n in sorted(_requirement_names()):
        try: v = version(n)
        except PackageNotFoundError: v = None
        if v != pins[n]: wrong[n] = (v, pins[n])
    assert not wrong, f'installed vs locked: {wrong}'


def test_ci_runs_the_readme_test_command():
    "`.ci/run` runs exactly the README's test command, and nothing sets another environment for it."
    readme = (ROOT / 'README.md').read_text()
    assert 'python3 tasks.py test' in readme
    cmds = [l.strip() for l in (ROOT / '.ci' / 'run').read_text().splitlines() if l.strip() and not l.lstrip().startswith('#')]
    assert cmds[-1] == 'python3 tasks.py test', cmds
    assert not any(c.startswith('export') or '=' in c.split()[0] for c in cmds), cmds


def test_every_experiment_parameter_parses():
    "papermill parses every line of every experiment's parameters cell (a line it cannot parse is silently dropped)."
    import ast, json, logging
    import papermill as pm
    for nb in sorted((ROOT / 'experiments').glob('*.ipynb')):
        cell = next(c for c in json.loads(nb.read_text())['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
        names = [t.id for s in ast.parse(''.join(cell['source'])).body if isinstance(s, ast.Assign) for t in s.targets]
        records = []
        h = logging.Handler(); h.emit = records.append
        log = logging.getLogger('papermill'); log.addHandler(h)
        try: params = pm.inspect_notebook(str(nb))
        finally: log.removeHandler(h)
        bad = [r.getMessage() for r in records if 'Unable to parse' in r.getMessage()]
        assert not bad, f'{nb.name}: {bad}'
        assert list(params) == names, f'{nb.name}: papermill sees {list(params)}, the cell assigns {names}'


SUBPACKAGES = ('concept', 'origin', 'model')


def _imports(path: Path, pkg: str) -> set:
    "Every attrib module the file `path` of module `pkg` imports (absolute or relative, top level or inside functions), as dotted names."
    import ast
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import): out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split('.')[:len(pkg.split('.')) - node.level]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else: mod = node.module or ''
            out.add(mod)
            out |= {f'{mod}.{a.name}' for a in node.names}
    return {m for m in out if m == 'attrib' or m.startswith('attrib.')}


def test_subpackages_never_import_each_other():
    "attrib.concept, attrib.origin and attrib.model share the core modules but never import one another."
    bad = []
    for sub in SUBPACKAGES:
        for f in sorted((ROOT / 'attrib' / sub).glob('*.py')):
            others = {o for o in SUBPACKAGES if o != sub}
            for m in _imports(f, f'attrib.{sub}.{f.stem}'):
                if len(m.split('.')) > 1 and m.split('.')[1] in others: bad.append(f'{f.relative_to(ROOT)} imports {m}')
    assert not bad, bad


def test_layout():
    "The three questions have their subpackages; the shared core stays flat."
    for sub in SUBPACKAGES: assert (ROOT / 'attrib' / sub / '__init__.py').is_file(), sub
    flat = {p.stem for p in (ROOT / 'attrib').glob('*.py')} - {'__init__', '_modidx'}
    assert flat <= {'core', 'dist', 'report', 'train', 'images', 'sources', 'linalg', 'losses', 'backbones', 'features', 'zoo',
                    'experiments', 'cli'}, flat


# every notebook, library and experiment, is held to the notebook form of issue 13 (item 6)
FORM_NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb')) + sorted((ROOT / 'experiments').glob('*.ipynb'))
MAX_LINE = 120


def _form_problems(src: str) -> list:
    "(line, problem) of one code cell: a line over MAX_LINE characters, a `;` that chains statements (tokens, not text)."
    import io, tokenize
    out = [(i, f'{len(l)} characters (> {MAX_LINE})') for i, l in enumerate(src.splitlines(), 1) if len(l) > MAX_LINE]
    code = '\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines()) + '\n'   # magics
    try:
        for t in tokenize.generate_tokens(io.StringIO(code).readline):
            if t.type == tokenize.OP and t.string == ';': out.append((t.start[0], '`;` chains statements'))
    except (tokenize.TokenError, SyntaxError) as e: out.append((0, f'cannot be tokenized ({e})'))
    return sorted(out)


def _notebook_form_problems(path: Path) -> list:
    import json
    out = []
    for k, c in enumerate(json.loads(path.read_text())['cells']):
        if c['cell_type'] != 'code': continue
        out += [f"{path.name} cell {k} (id {c.get('id')}) line {ln}: {why}" for ln, why in _form_problems(''.join(c['source']))]
    return out


def test_notebook_form_checker_fails_on_bad_cells():
    "The checker sees a long line and a `;` chain, and not a `;` in a string or a comment."
    bad = 'x = 1; y = 2\n' + 'z = ' + '1 + ' * 40 + '1\n' + 'if x: f(); g()\n'
    got = _form_problems(bad)
    assert got == [(1, '`;` chains statements'), (2, '165 characters (> 120)'), (3, '`;` chains statements')], got
    assert _form_problems("s = 'a; b'  # c; d\nprint(f'{s};')\n%time x = 1; y = 2\n") == []
    import json, tempfile
    nb = dict(cells=[dict(cell_type='markdown', id='m', source=['a; b ' * 40]),
                     dict(cell_type='code', id='c1', source=['#| export\n', 'def f(x): "doc"; return x'])])
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / 'bad.ipynb'
        p.write_text(json.dumps(nb))
        assert _notebook_form_problems(p) == ['bad.ipynb cell 1 (id c1) line 2: `;` chains statements']


def test_notebook_form():
    "Code cells of every notebook: lines of at most 120 characters, no `;` statement chains."
    assert len(FORM_NOTEBOOKS) > 30
    problems = [q for p in FORM_NOTEBOOKS for q in _notebook_form_problems(p)]
    assert not problems, f'{len(problems)} problem(s):\n' + '\n'.join(problems)
