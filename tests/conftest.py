"""Suite-wide set-up: the verdict must not depend on the machine's state.

One BLAS/OpenMP thread (float results of trained models depend on the thread count), no progress bars, no hub, and a
data/runs/figures directory of the suite's own (fresh per run, shared by the xdist workers, removed at the end) unless
the caller (`python3 tasks.py test`) already made one."""
import os, shutil, tempfile

for _k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'): os.environ[_k] = '1'
os.environ['ATTRIB_PROGRESS'] = '0'
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

_OWN_TMP = None
if not os.environ.get('ATTRIB_DATA'):      # the xdist workers inherit the controller's environment, hence its folder
    _OWN_TMP = tempfile.mkdtemp(prefix='attrib-test-')
    for _k, _sub in (('ATTRIB_DATA', 'data'), ('ATTRIB_RUNS', 'runs'), ('ATTRIB_FIGURES', 'figures')):
        os.environ[_k] = os.path.join(_OWN_TMP, _sub)


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', help='also run tests and notebook cells flagged slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: heavy run, excluded from CI (enable with --run-slow)')
    import torch
    torch.set_num_threads(1)


def pytest_unconfigure(config):
    if _OWN_TMP and not hasattr(config, 'workerinput'): shutil.rmtree(_OWN_TMP, ignore_errors=True)


import pytest


@pytest.fixture(autouse=True)
def _own_data_dir_kept():
    "A test that unsets or moves the suite's data folder fails (later tests would write into the source tree's data/)."
    before = {k: os.environ.get(k) for k in ('ATTRIB_DATA', 'ATTRIB_RUNS', 'ATTRIB_FIGURES')}
    yield
    after = {k: os.environ.get(k) for k in before}
    assert after == before, f'the test changed the environment of the suite: {before} -> {after}'


def pytest_collection_modifyitems(config, items):
    import pytest
    if config.getoption('--run-slow'): return
    skip = pytest.mark.skip(reason='slow: run with --run-slow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
