"""The main experiment (experiments/concept_attribution.ipynb) end to end on the tiny mini-AbC with the smallest settings,
and its outputs checked against independent computations."""
import json
import math
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('ATTRIB_PROGRESS', '0')

METHODS = ['raw', 'colour histogram', 'PCA whitening', 'align-only', 'infomax-only', 'A&D', 'AbC supervised', 'CCA oracle']
TINY = dict(data_size='tiny', seeds=[0, 1], sweep_seeds=[0], lambda_sweep=[0.0, 1.0, 3.0], epochs=1, batch_size=16, proj_hidden=64,
            proj_dim=16, pred_hidden=64, aug_bank=2, abc_epochs=2, abc_batch_size=16, abc_val_every=1, cca_k=[4, 8], whiten_k=[8, 16], dino_out_dim=64,
            calib_distractors=20, n_examples=2, eval_batch_size=64, threads=1)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    from attrib.experiments import run_experiment
    return run_experiment('concept_attribution', out_dir=tmp_path_factory.mktemp('concept_attribution'), **TINY)


def test_outputs_exist(run_dir):
    for f in ('concept_attribution.ipynb', 'metrics.json', 'results.csv', 'results_per_seed.csv', 'lambda_sweep.csv', 'verdict.csv',
              'canonical_correlations.csv'):
        assert (run_dir / f).is_file(), f
    for f in ('lambda_sweep', 'correlation_heatmaps', 'canonical_correlations', 'retrieval_examples'):
        p = run_dir / f'{f}.png'
        assert p.is_file() and p.stat().st_size > 5000, f


def test_results_table(run_dir):
    from attrib.concept.abc_data import AbCDataset
    from attrib.concept.mini_abc import build_mini_abc
    ds = AbCDataset(build_mini_abc(size='tiny'))
    splits = [s for s in ds.split_names() if ds.split_info(s)['role'] == 'test']
    res = pd.read_csv(run_dir / 'results.csv')
    for c in ['method', 'split', 'synth_type', 'centric', 'seen'] + [f'{m}_{a}' for m in ('mAP', 'R@5', 'R@10', 'R@100') for a in ('mean', 'std')]:
        assert c in res.columns, c
    assert set(res.method) == set(METHODS)
    assert set(res.split) == set(splits + ['val', 'seen (pooled)', 'unseen (pooled)'])
    for sp in splits:
        types = set(ds.synth_types(sp)) | {'all'}
        for m in METHODS: assert set(res[(res.method == m) & (res.split == sp)].synth_type) == types, (m, sp)
    vals = res[[c for c in res.columns if c.endswith('_mean')]].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    assert (res['R@5_mean'] <= res['R@10_mean'] + 1e-12).all() and (res['R@10_mean'] <= res['R@100_mean'] + 1e-12).all()
    for m in ('raw', 'colour histogram', 'PCA whitening', 'CCA oracle'):          # deterministic methods: no spread over seeds
        assert np.allclose(res[res.method == m][['mAP_std', 'R@5_std']].fillna(0), 0)
    per_seed = pd.read_csv(run_dir / 'results_per_seed.csv')
    assert sorted(per_seed.seed.unique()) == TINY['seeds']
    n = per_seed[(per_seed.method == 'A&D') & (per_seed.synth_type == 'all') & (per_seed.seed == 0)].set_index('split')['n_queries']
    for sp in splits: assert n[sp] == len(ds.queries(sp)[0])
    # pooled rows = every seen (unseen) test query together: the query-weighted mean of the per-split values
    for grp, flag in (('seen (pooled)', True), ('unseen (pooled)', False)):
        sps = [sp for sp in splits if ds.split_info(sp)['seen'] == flag]
        for (m, sd), d in per_seed[(per_seed.synth_type == 'all') & per_seed.split.isin(sps)].groupby(['method', 'seed']):
            pooled = per_seed[(per_seed.method == m) & (per_seed.seed == sd) & (per_seed.split == grp)].iloc[0]
            assert pooled['n_queries'] == sum(len(ds.queries(sp)[0]) for sp in sps)
            for metric in ('mAP', 'R@5'):
                assert math.isclose(pooled[metric], (d[metric] * d['n_queries']).sum() / d['n_queries'].sum(), abs_tol=1e-4)


def test_raw_baseline_matches_a_direct_evaluation(run_dir):
    """The notebook's raw row (trunk cached once, tail run on top) equals AbC evaluation of the plain backbone's features."""
    from attrib.concept.abc_data import AbCDataset
    from attrib.concept.abc_eval import evaluate_split
    from attrib.backbones import create_backbone
    from attrib.concept.mini_abc import build_mini_abc
    import torch
    from attrib.features import extract_features, split_image_paths
    ds = AbCDataset(build_mini_abc(size='tiny'))
    bb = create_backbone('mobilenetv2', img_size=64)
    res = pd.read_csv(run_dir / 'results.csv')
    sps = ('test_seen_object', 'test_unseen_style')
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        paths = list(dict.fromkeys(ds.distractor_paths() + [p for sp in sps for p in split_image_paths(ds, sp)]))
        feats = extract_features(bb, paths, root=ds.root, batch_size=64, show_progress=False)   # full forward passes of the plain backbone
    finally: torch.set_num_threads(threads)
    for sp in sps:
        s, _ = evaluate_split(ds, sp, feats)
        mine = res[(res.method == 'raw') & (res.split == sp)].set_index('synth_type')
        for t, row in s.iterrows():
            for m in ('mAP', 'R@5', 'R@10', 'R@100'):
                assert math.isclose(mine.loc[t, f'{m}_mean'], row[m], abs_tol=1e-4), (sp, t, m, mine.loc[t, f'{m}_mean'], row[m])


def test_metrics_json(run_dir):
    m = json.loads((run_dir / 'metrics.json').read_text())
    assert {'metrics', 'params', 'env'} <= set(m)
    mm = m['metrics']
    for k in ('results', 'verdict', 'lambda_selected', 'lambda_sweep_val', 'calibration', 'offdiag_corr', 'canonical_corr_top10_mean',
              'timings', 'wall_s', 'cpu_s', 'cca_k_selected'):
        assert k in mm, k
    assert set(mm['results']) == set(METHODS)
    assert mm['lambda_selected'] in [l for l in TINY['lambda_sweep'] if l > 0]
    val = {float(k): v['mAP'] for k, v in mm['lambda_sweep_val'].items()}
    assert val[mm['lambda_selected']] == max(v for k, v in val.items() if k > 0)   # the best λ > 0 on val
    assert m['params']['selection_metric'] == 'mAP' and m['params']['infomax_on'] == 'backbone'
    # every choice is recorded with the val numbers it was made on, and is their argmax
    sel = mm['selections']
    assert {'A&D setting and λ', 'align-only setting', 'CCA ridge, k', 'whitening k'} <= set(sel) and any(k.startswith('AbC heads epoch') for k in sel)
    for name, r in sel.items():
        best = max(r['val'], key=lambda c: c['score'])
        assert r['chosen'] == best['candidate'] or math.isclose(next(c['score'] for c in r['val'] if c['candidate'] == r['chosen']), best['score']), name
    assert sel['A&D setting and λ']['chosen'][1] == mm['lambda_selected']
    assert all(c['candidate'][1] > 0 for c in sel['A&D setting and λ']['val']) and all(c['candidate'][1] == 0 for c in sel['align-only setting']['val'])
    # the build that was measured is identified by its content hash; val's faithfulness as a proxy is reported
    from attrib.concept.mini_abc import build_mini_abc
    assert mm['data']['content_hash'] == json.loads((build_mini_abc(size='tiny') / 'manifest.json').read_text())['content_hash']
    tau = mm['kendall_tau_val_test']
    assert set(map(int, tau['per_seed'])) == set(TINY['seeds']) and (math.isnan(tau['mean']) or -1 <= tau['mean'] <= 1)
    assert set(map(float, mm['lambda_sweep_val'])) == set(TINY['lambda_sweep'])
    assert mm['cca_k_selected'] in TINY['cca_k'] and mm['whiten_k_selected'] in TINY['whiten_k']
    assert mm['cca_ridge_selected'] in m['params']['cca_ridge'] and len(mm['cca_val_map']) == len(m['params']['cca_ridge']) * len(TINY['cca_k'])
    assert set(map(int, mm['whiten_val_map'])) == set(TINY['whiten_k'])
    for cmp in ('A&D vs raw', 'A&D vs align-only', 'A&D vs PCA whitening', 'A&D vs AbC supervised'):
        for metric in ('R@5', 'mAP'):
            for sp, v in mm['verdict'][cmp][metric].items():
                assert v['beats'] == (v['diff'] > v['spread']) and v['spread'] >= 0
    for k, v in mm['calibration'].items():
        assert all(math.isfinite(x) for x in v.values()), k
        assert 0 <= v['ece'] <= 1 and v['nll'] > 0
    for key in ('offdiag_corr', 'offdiag_corr_l2'):
        assert set(mm[key]) == {'raw', 'align-only', 'A&D'} and all(0 <= v <= 1 for v in mm[key].values()), key
    assert all(0 <= v <= 1 + 1e-9 for v in mm['canonical_corr_top10_mean'].values())
    assert mm['wall_s'] > 0 and mm['cpu_s'] > 0
    sweep = pd.read_csv(run_dir / 'lambda_sweep.csv')
    assert sorted(sweep.lam.unique()) == sorted(TINY['lambda_sweep']) and 'split' not in sweep.columns   # the search table is val only


def _kill_tree(pid):
    "Kill process `pid` (started by this test) and its descendants (papermill's kernel runs in its own session)."
    import psutil                                   # installed with ipykernel, which papermill runs
    try: p = psutil.Process(pid)
    except psutil.NoSuchProcess: return
    for q in p.children(recursive=True) + [p]:
        try: q.kill()
        except psutil.NoSuchProcess: pass


def test_killed_main_job_resumes(run_dir, tmp_path):
    """The main job killed (SIGKILL, kernel included) after its first A&D runs finished, then re-run with the same out_dir: the
    finished runs are loaded, not retrained (their checkpoints untouched), and every output equals the uninterrupted run's,
    every parameter included."""
    import subprocess, sys, time
    from attrib.core import load_json
    out = tmp_path / 'killed'
    code = f"from attrib.experiments import run_experiment; run_experiment('concept_attribution', out_dir={str(out)!r}, **{TINY!r})"
    p = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while len(list((out / 'ad_runs').glob('*/val.json'))) < 2:
            assert p.poll() is None, 'the job ended before it could be killed'
            assert time.time() - t0 < 900, 'no A&D run finished in 15 minutes'
            time.sleep(0.05)
    finally:
        _kill_tree(p.pid); p.wait()
    time.sleep(0.5)
    assert not (out / 'metrics.json').exists()
    done = {d.name: (d / 'checkpoints' / 'last.pt').stat().st_mtime_ns for d in (out / 'ad_runs').iterdir() if (d / 'val.json').is_file()}
    assert len(done) >= 2
    # the re-run by papermill itself, without the runner's params.json: metrics.json's parameters then come from the notebook alone
    import papermill as pm
    from attrib.experiments import experiments_dir, experiment_defaults
    (out / 'params.json').unlink()
    pm.execute_notebook(str(experiments_dir() / 'concept_attribution.ipynb'), str(out / 'rerun.ipynb'), parameters={**TINY, 'out_dir': str(out)},
                        kernel_name='python3', cwd=str(out), progress_bar=False)
    status = load_json(out / 'ad_runs' / 'runs.json')
    assert set(status) == {d.name for d in (run_dir / 'ad_runs').iterdir() if d.is_dir()}     # the same runs as uninterrupted
    for name, mtime in done.items():
        assert status[name] == 'reused', (name, status[name])
        assert (out / 'ad_runs' / name / 'checkpoints' / 'last.pt').stat().st_mtime_ns == mtime, name   # loaded, not rewritten
    assert sum(v == 'reused' for v in status.values()) == len(done) and set(status.values()) <= {'reused', 'resumed', 'trained'}
    lrs = TINY.get('abc_lr', experiment_defaults('concept_attribution')['abc_lr'])     # one file per seed and lr tried
    assert sorted(p.name for p in (out / 'abc_heads').glob('*.pt')) == sorted(
        f'seed{s}_lr{lr:g}.pt' for s in TINY['seeds'] for lr in lrs)                      # saved too
    a, b = (json.loads((d / 'metrics.json').read_text()) for d in (run_dir, out))
    skip = {'timings', 'wall_s', 'cpu_s'}
    assert {k: v for k, v in a['metrics'].items() if k not in skip} == {k: v for k, v in b['metrics'].items() if k not in skip}
    assert {k: v for k, v in a['params'].items() if k != 'out_dir'} == {k: v for k, v in b['params'].items() if k != 'out_dir'}
    assert set(b['params']) == set(experiment_defaults('concept_attribution'))        # every parameter, recorded by the notebook
    for f in ('results.csv', 'results_per_seed.csv', 'lambda_sweep.csv', 'verdict.csv', 'canonical_correlations.csv'):
        assert (run_dir / f).read_text() == (out / f).read_text(), f

