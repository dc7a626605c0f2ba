import os

os.environ.setdefault('ATTRIB_PROGRESS', '0')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', help='also run tests and notebook cells flagged slow')


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: heavy run, excluded from CI (enable with --run-slow)')


def pytest_collection_modifyitems(config, items):
    import pytest
    if config.getoption('--run-slow'): return
    skip = pytest.mark.skip(reason='slow: run with --run-slow')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
