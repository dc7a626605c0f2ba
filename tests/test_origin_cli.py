"""`attrib origin --generator` for real: tiny diffusers models (AutoencoderKL + UNet2DModel latent diffusion, pixel DDIM) trained
here on the photo crops and saved with save_pretrained, a bare VAE folder, a module:callable factory, and the output/error
handling of issue 11 (--out checked first, atomic CSV + JSON + PNG, non-UTF-8 file names, --on-error skip, --root).
Numbers here say nothing about the method (the models train for seconds); the checks are on what the command does."""
import contextlib, io, json, os, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

FAST = ['--steps', '4', '--restarts', '1', '--n-candidates', '0', '--n-calib', '4', '--alpha', '0.25', '--sample-steps', '2']


@pytest.fixture(scope='module')
def zoo(tmp_path_factory):
    from attrib.images import tensor_to_images
    from attrib.zoo import train_diffusers_model, load_diffusers_generator, zoo_real_images
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('zoo')
    ldm, ddim = train_diffusers_model('ldm', 'tiny', root=root), train_diffusers_model('ddim', 'tiny', root=root)
    g = load_diffusers_generator(ldm)
    g.vae.save_pretrained(root / 'vae-only')
    imgs = root / 'imgs'; imgs.mkdir()
    for i, a in enumerate(tensor_to_images(g.sample(3, seed=99))): Image.fromarray(a).save(imgs / f'gen_{i}.png')
    for i, a in enumerate(zoo_real_images('test', 3, size='tiny')): Image.fromarray(a).save(imgs / f'real_{i}.png')
    return dict(root=root, ldm=ldm, ddim=ddim, vae=root / 'vae-only', imgs=imgs)


def run(argv):
    "attrib.cli.main in-process: (exit code, stdout, stderr)."
    from attrib.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main(argv); code = 0
        except SystemExit as e: code = e.code if isinstance(e.code, int) else (err.write(str(e.code)) and 1)
    return code, out.getvalue(), err.getvalue()


def read(out):
    return pd.read_csv(out / 'origin.csv'), json.loads((out / 'origin.json').read_text())


def test_ldm_pipeline_folder(zoo, tmp_path):
    from attrib.zoo import load_diffusers_generator, weights_digest
    code, so, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['ldm']), '--root', str(zoo['root']), '--out', str(tmp_path / 'r')] + FAST)
    assert code == 0, se
    t, js = read(tmp_path / 'r')
    assert len(t) == 6 and set(t.columns) >= {'path', 'score', 'threshold', 'stage', 'made_by_model'} and (t.score > 0).all()
    assert js['weights_sha1'] == weights_digest(load_diffusers_generator(zoo['ldm']))
    assert 'probability <= alpha' in js['rule']['fpr_control'] and len(js['calibration']['full']['scores']) == 4
    assert (tmp_path / 'r' / 'origin.png').read_bytes()[:4] == b'\x89PNG'
    assert 'images attributed to' in so and 'false alarms' in so
    # a second run reads the calibration from the cache (keyed by the weights' content)
    code, _, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['ldm']), '--root', str(zoo['root']), '--out', str(tmp_path / 'r2')] + FAST)
    t2, js2 = read(tmp_path / 'r2')
    assert code == 0 and js2['timing']['calibration_cached'] and js2['calibration'] == js['calibration']
    assert np.allclose(t2.score, t.score)


def test_vae_folder_aedr_matches_library(zoo, tmp_path):
    from attrib.zoo import load_diffusers_generator
    from attrib.origin.inversion import aedr_scores
    from attrib.origin.job import load_folder
    code, _, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['vae']), '--method', 'aedr', '--rule', 'kde',
                       '--root', str(zoo['root']), '--out', str(tmp_path / 'a.csv'), '--n-calib', '6'])
    assert code == 0, se
    t = pd.read_csv(tmp_path / 'a.csv'); js = json.loads((tmp_path / 'a.json').read_text())
    g = load_diffusers_generator(zoo['vae']); x, paths, _ = load_folder(zoo['imgs'], g.img_size)
    assert [str(p) for p in paths] == list(t.path)
    assert np.allclose(t.score, aedr_scores(g, x)['score'], rtol=1e-6)          # the library's AEDR score of the same images
    assert js['method'] == 'aedr' and (tmp_path / 'a.png').exists()


def test_pixel_ddim_and_cascade(zoo, tmp_path):
    code, _, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['ddim']), '--root', str(zoo['root']),
                       '--out', str(tmp_path / 'd')] + FAST)
    assert code == 0, se
    assert len(read(tmp_path / 'd')[0]) == 6
    code, _, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['ldm']), '--method', 'cascade', '--root', str(zoo['root']),
                       '--out', str(tmp_path / 'c')] + FAST)
    assert code == 0, se
    t, js = read(tmp_path / 'c')
    assert set(t.stage) <= {'cheap-flag', 'cheap-accept', 'full'} and set(js['calibration']) == {'cheap', 'full'}
    assert 'union bound' in js['rule']['fpr_control']
    # pixel DDIM's cascade: its cheap stage is the reconstruction through DDIM inversion (no Adam step)
    code, _, se = run(['origin', str(zoo['imgs']), '--generator', str(zoo['ddim']), '--method', 'cascade', '--root', str(zoo['root']),
                       '--out', str(tmp_path / 'dc')] + FAST)
    assert code == 0, se
    t, js = read(tmp_path / 'dc')
    from attrib.origin.inversion import origin_scores
    from attrib.origin.job import load_folder
    from attrib.zoo import load_diffusers_generator
    g = load_diffusers_generator(zoo['ddim'], 2)
    x, _, _ = load_folder(zoo['imgs'], g.img_size)
    ref = origin_scores(g, x, 'latenttracer', steps=0)
    assert (ref['n_steps'] == 0).all() and set(js['calibration']) == {'cheap', 'full'}
    dec = (t.stage != 'full').to_numpy()
    assert np.allclose(t.score[dec], ref['score'][dec], rtol=1e-5)
    assert np.allclose(t.threshold[dec], js['calibration']['cheap']['threshold'])


def test_module_callable_factory(tmp_path, monkeypatch):
    (tmp_path / 'usergen.py').write_text(textwrap.dedent('''
        import torch, torch.nn as nn
        def make():
            torch.manual_seed(0)
            net = nn.Sequential(nn.Linear(8, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16)))
            return net, (8,), (-1, 1)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    imgs = tmp_path / 'imgs'; imgs.mkdir()
    for i in range(3): Image.fromarray(np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(imgs / f'{i}.png')
    code, so, se = run(['origin', str(imgs), '--generator', 'usergen:make', '--root', str(tmp_path / 'z'), '--out', str(tmp_path / 'o')] + FAST)
    assert code == 0, se
    t, js = read(tmp_path / 'o')
    assert len(t) == 3 and js['generator'] == 'usergen:make'
    assert (t.made_by_model == (t.score <= t.threshold)).all()                 # the flag is the rule's verdict


@pytest.fixture(scope='module')
def dcgan_env(tmp_path_factory):
    from attrib.zoo import train_zoo
    d = tmp_path_factory.mktemp('data')
    train_zoo(['dcgan'], size='tiny', root=d / 'zoo')
    return d


def test_out_survives_non_utf8_name(dcgan_env, tmp_path):
    "shared/repro/origin_out_loses_results.sh: a Latin-1 file name used to crash the print after the CSV header was written."
    D = tmp_path / 'imgs'; D.mkdir()
    Image.new('RGB', (32, 32), (9, 99, 199)).save(os.path.join(os.fsencode(D), b'caf\xe9.png'))
    env = {**os.environ, 'ATTRIB_DATA': str(dcgan_env), 'OMP_NUM_THREADS': '1', 'ATTRIB_PROGRESS': '0',
           'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, '-c', 'from attrib.cli import main; main()', 'origin', 'dcgan', str(D), '--size', 'tiny', '--steps', '5', '--restarts', '1',
                        '--n-calib', '8', '--n-candidates', '0', '--out', str(tmp_path / 'out.csv')], env=env, capture_output=True)
    assert r.returncode == 0, r.stderr.decode(errors='replace')[-2000:]
    t = pd.read_csv(tmp_path / 'out.csv')
    assert len(t) == 1 and t.path[0].endswith('caf\\xe9.png')
    assert json.loads((tmp_path / 'out.json').read_text())['n_images'] == 1


def test_bad_out_fails_before_compute(dcgan_env, tmp_path, monkeypatch):
    monkeypatch.setenv('ATTRIB_DATA', str(dcgan_env))
    D = tmp_path / 'imgs'; D.mkdir(); Image.new('RGB', (16, 16)).save(D / 'a.png')
    (tmp_path / 'x.csv').mkdir()
    calib = dcgan_env / 'origin_calib'
    before = set(calib.glob('*')) if calib.exists() else set()
    code, _, se = run(['origin', 'dcgan', str(D), '--size', 'tiny', '--out', str(tmp_path / 'x.csv')])
    assert code != 0 and 'attrib: error:' in se and 'is a directory' in se
    assert (set(calib.glob('*')) if calib.exists() else set()) == before       # nothing was computed
    (tmp_path / 'f').write_text('x')
    code, _, se = run(['origin', 'dcgan', str(D), '--size', 'tiny', '--out', str(tmp_path / 'f' / 'r.csv')])
    assert code != 0 and 'cannot write' in se
    if os.geteuid() != 0:                                                        # root writes anywhere
        ro = tmp_path / 'ro'; ro.mkdir(); ro.chmod(0o500)
        code, _, se = run(['origin', 'dcgan', str(D), '--size', 'tiny', '--out', str(ro / 'r.csv')])
        ro.chmod(0o700)
        assert code != 0 and 'cannot write' in se


def test_on_error_skip_and_root(dcgan_env, tmp_path):
    D = tmp_path / 'imgs'; D.mkdir()
    Image.new('RGB', (16, 16), (200, 10, 10)).save(D / 'ok.png'); (D / 'bad.jpg').write_bytes(b'\xff\xd8 not a jpeg')
    args = ['origin', 'dcgan', str(D), '--size', 'tiny', '--root', str(dcgan_env / 'zoo'), '--steps', '3', '--restarts', '1',
            '--n-candidates', '0', '--n-calib', '4']
    code, _, se = run(args)
    assert code != 0 and 'bad.jpg' in se and '--on-error skip' in se
    code, so, se = run(args + ['--on-error', 'skip', '--out', str(tmp_path / 'o')])
    assert code == 0, se
    t, js = read(tmp_path / 'o')
    assert list(t.path) == [str(D / 'ok.png')] and js['n_skipped'] == 1 and js['skipped'][0]['path'].endswith('bad.jpg')
    assert 'skipped' in se and '1 unreadable, skipped' in so
    assert list((dcgan_env / 'zoo' / 'origin_calib').glob('*.json'))        # calibration cached under --root
    code, so, se = run(['train-zoo', '--size', 'tiny', '--names', 'dcgan', '--root', str(dcgan_env / 'zoo')])
    assert code == 0 and so.startswith('dcgan\tgan\t16px')
    code, _, se = run(['train-zoo', '--names', 'biggan'])
    assert code != 0 and 'unknown zoo model' in se
    code, _, se = run(['train-zoo', '--names', 'dcgan', '--jobs', '0'])
    assert code != 0 and '--jobs must be >= 1' in se
    code, _, se = run(['train-zoo', '--names', 'ldm', '--seed', '3'])
    assert code != 0 and '--seed applies to' in se


def test_defaults_are_the_experiment_preset():
    "One preset behind the CLI, the experiment and the README: the experiment's parameters equal ORIGIN_PRESET."
    import papermill as pm
    from attrib.origin.inversion import ORIGIN_PRESET
    from attrib.cli import build_parser
    nb = Path(__file__).resolve().parents[1] / 'experiments' / 'origin_attribution.ipynb'
    params = {k: eval(v['default']) for k, v in pm.inspect_notebook(str(nb)).items()}
    assert {k: params[k] for k in ORIGIN_PRESET} == ORIGIN_PRESET
    a = build_parser().parse_args(['origin', 'folder', '--generator', 'dcgan'])
    assert {k: getattr(a, k) for k in ORIGIN_PRESET} == ORIGIN_PRESET
