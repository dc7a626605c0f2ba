"""`attrib fingerprint train` and `attrib which-model` end to end on enrolment folders made from the tiny zoo: dcgan, vae and
sngan are enrolled, wgangp and flow are held back as unknown. A tiny extractor (16 x 16, 8 synthetic architectures, one
short epoch) is trained for it; the checks are on behaviour (files, consistency, calibration, cache, errors), not on
how well such an extractor attributes."""
import json, os, subprocess, sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ENROLLED, UNKNOWN = ['dcgan', 'vae', 'sngan'], ['wgangp', 'flow']
TINY = dict(zoo_size='tiny', n_archs=8, holdout_archs=3, synth_steps=10, n_real_train=100, epochs=1, steps_per_epoch=4, P=4, K=4, width=0.25)
N_ENROL, N_QUERY = 12, 6


def _cli(*args):
    "Run `attrib` in this process; returns its stdout, or raises SystemExit like the console script."
    import contextlib, io
    from attrib.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out: main([str(a) for a in args])
    return out.getvalue()


def _save_pngs(x, folder, prefix=''):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    a = (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for i, im in enumerate(a): Image.fromarray(im).save(folder / f'{prefix}{i:03d}.png')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    from attrib.zoo import train_zoo
    d = tmp_path_factory.mktemp('which_model')
    mp = pytest.MonkeyPatch(); mp.setenv('ATTRIB_DATA', str(d / 'data')); mp.setenv('ATTRIB_RUNS', str(d / 'runs'))
    zoo = train_zoo(size='tiny')
    for n, g in zoo.items():
        if n in ENROLLED: _save_pngs(g.sample(N_ENROL, seed=1), d / 'enrol' / n)
        _save_pngs(g.sample(N_QUERY, seed=2), d / 'queries', prefix=f'{n}_')
    rows = [f'{p.name},{p.name.split("_")[0]}' for p in sorted((d / 'queries').glob('*.png'))]
    (d / 'truth.csv').write_text('query,source\n' + '\n'.join(rows) + '\n')
    out = _cli('fingerprint', 'train', '--out', d / 'fp.safetensors', '--synth-root', d / 'synth',
               *sum([['-p', k, repr(v) if isinstance(v, str) else v] for k, v in TINY.items()], []))
    assert out.startswith(str(d / 'fp.safetensors'))
    yield d
    mp.undo()


def _enroll_args(d, names=ENROLLED):
    return sum([['--enroll', f'{n}={d / "enrol" / n}'] for n in names], [])


def test_fingerprint_train_files_and_cache(env):
    from attrib.model.which import fingerprint_config
    info = json.loads((env / 'fp.json').read_text())
    assert info['preset'] == fingerprint_config(**TINY) and len(info['data']) == 16 and info['n_classes'] == 5
    assert len(info['heldout_archs']) == 3 and not set(info['heldout_archs']) & {m.rsplit('-s', 1)[0] for m in info['train_models']}
    assert {'train_ce', 'heldout_identification_acc', 'heldout_verification_auc'} <= set(info['metrics'])
    assert (env / 'fp.safetensors').stat().st_size > 0 and (env / 'fp.ckpt' / 'last.pt').exists()
    before = (env / 'fp.safetensors').stat().st_mtime_ns
    _cli('fingerprint', 'train', '--out', env / 'fp.safetensors', '--synth-root', env / 'synth',
         *sum([['-p', k, repr(v) if isinstance(v, str) else v] for k, v in TINY.items()], []))   # same setting: loaded, not retrained
    assert (env / 'fp.safetensors').stat().st_mtime_ns == before
    with pytest.raises(SystemExit, match='another setting'):
        _cli('fingerprint', 'train', '--out', env / 'fp.safetensors', '--synth-root', env / 'synth', '-p', 'lr', '0.01',
             *sum([['-p', k, repr(v) if isinstance(v, str) else v] for k, v in TINY.items()], []))
    with pytest.raises(SystemExit, match=r"attrib: error: unknown fingerprint setting\(s\) \['epoch'\]"):
        _cli('fingerprint', 'train', '--out', env / 'x.safetensors', '-p', 'epoch', '1')


def test_which_model_with_truth(env):
    out = _cli('which-model', env / 'queries', *_enroll_args(env), '--extractor', env / 'fp.safetensors', '--truth', env / 'truth.csv',
               '--out', env / 'out', '--fpr', '0.1')
    assert 'accuracy' in out and 'threshold' in out
    df = pd.read_csv(env / 'out' / 'predictions.csv')
    n = N_QUERY * (len(ENROLLED) + len(UNKNOWN))
    assert len(df) == n and set(df.answer) <= set(ENROLLED) | {'unknown'} and set(df.nearest) <= set(ENROLLED)
    assert ((df.answer == 'unknown') == (df.score < df.threshold)).all()                # the rule, row by row
    assert (df.runner_up_score <= df.score + 1e-12).all() and df.score.between(-1, 1).all()
    assert (df.truth == [Path(q).name.split('_')[0] for q in df['query']]).all()
    res = json.loads((env / 'out' / 'predictions.json').read_text())
    assert [r['answer'] for r in res['predictions']] == df.answer.tolist() and res['threshold'] == df.threshold[0]
    cal = res['calibration']
    assert cal['n_images'] == N_ENROL * len(ENROLLED) and cal['loo_rejected'] <= 0.1 and cal['fpr'] == 0.1
    m = json.loads((env / 'out' / 'metrics.json').read_text())
    assert (m['n_known'], m['n_unknown']) == (N_QUERY * len(ENROLLED), N_QUERY * len(UNKNOWN))
    true = np.where(df.truth.isin(ENROLLED), df.truth, 'unknown')
    assert m['accuracy'] == pytest.approx(float((df.answer == true).mean()))           # independent recount from the CSV
    from sklearn.metrics import roc_auc_score, f1_score
    assert m['auroc'] == pytest.approx(roc_auc_score(df.truth.isin(ENROLLED), df.score))
    assert m['macro_f1'] == pytest.approx(f1_score(true, df.answer, average='macro', zero_division=0))
    cm = np.array(m['confusion']); assert cm.shape == (4, 4) and cm.sum() == n and m['labels'] == ENROLLED + ['unknown']
    assert (env / 'out' / 'confusion_matrix.png').read_bytes()[:4] == b'\x89PNG'


def test_cache_and_python_api(env):
    from attrib.model.which import ModelAttributor
    _cli('which-model', env / 'queries', *_enroll_args(env), '--extractor', env / 'fp.safetensors', '--out', env / 'o1')
    _cli('which-model', env / 'queries', *_enroll_args(env), '--extractor', env / 'fp.safetensors', '--out', env / 'o2')
    r1, r2 = (json.loads((env / o / 'predictions.json').read_text()) for o in ('o1', 'o2'))
    assert all(r2['models'][n]['cached'] for n in ENROLLED)                            # second run: enrolment read from the cache
    assert [r['score'] for r in r1['predictions']] == [r['score'] for r in r2['predictions']]
    assert not (env / 'o1' / 'metrics.json').exists()
    att = ModelAttributor(env / 'fp.safetensors', fpr=0.05)
    for n in ENROLLED: att.enroll(n, env / 'enrol' / n)
    p = att.predict(env / 'queries')
    assert p['answer'] == [r['answer'] for r in r1['predictions']]
    np.testing.assert_allclose(p['score'], [r['score'] for r in r1['predictions']], rtol=0, atol=1e-12)
    s = att.calibration['loo_scores']; t = att.threshold                                # at most fpr of enrolment images below t
    assert (s < t).mean() <= 0.05 and t in s


def test_bad_input(env, tmp_path):
    x = ['--extractor', env / 'fp.safetensors', '--out', tmp_path / 'o']
    bad = tmp_path / 'bad'; bad.mkdir(); (bad / 'a.png').write_bytes(b'not an image'); (bad / 'b.png').write_bytes(b'junk')
    with pytest.raises(SystemExit, match=r'attrib: error: .*a\.png: not a readable image'):
        _cli('which-model', env / 'queries', '--enroll', f'x={bad}', *x)
    with pytest.raises(SystemExit, match=r'attrib: error: .*nowhere: file not found'):
        _cli('which-model', env / 'queries', '--enroll', f'x={tmp_path / "nowhere"}', *x)
    (tmp_path / 't.csv').write_text('query,source\nsomething.png,dcgan\n')
    with pytest.raises(SystemExit, match=r'attrib: error: .*t\.csv: no true source for query'):
        _cli('which-model', env / 'queries', *_enroll_args(env), '--truth', tmp_path / 't.csv', *x)
    with pytest.raises(SystemExit, match=r'attrib: error: .*none\.safetensors: extractor not found'):
        _cli('which-model', env / 'queries', *_enroll_args(env), '--extractor', tmp_path / 'none.safetensors')
    one = tmp_path / 'one'; one.mkdir(); (one / 'x.png').write_bytes((env / 'enrol' / 'dcgan' / '000.png').read_bytes())
    with pytest.raises(SystemExit, match='needs at least 2 enrolment images'):
        _cli('which-model', env / 'queries', '--enroll', f'x={one}', *x)
    # the console script itself: one line on stderr, exit status 1
    r = subprocess.run([sys.executable, '-c', 'from attrib.cli import main; main()', 'which-model', str(env / 'queries'), '--enroll', f'x={bad}', *map(str, x)],
                       capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 1 and r.stderr.strip().count('\n') == 0 and r.stderr.startswith('attrib: error:') and 'a.png' in r.stderr
