"""experiments/origin_attribution.ipynb end to end on the tiny zoo (16 x 16 models trained for seconds, 8 images per set):
every output exists and holds sane values. Numbers here say nothing about the method; the default run does."""
import json

import numpy as np
import pandas as pd
import pytest

ZOO = ['dcgan', 'vae', 'sngan', 'wgangp', 'flow']


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from attrib.experiments import run_experiment
    d = tmp_path_factory.mktemp('origin_attribution')
    return run_experiment('origin_attribution', out_dir=d / 'run', zoo_size='tiny', n=8, n_calib=10, steps=40, restarts=2, lr=0.05,
                          patience=20, n_candidates=16, alpha=0.2, lt_steps=10, seed=0, threads=1, cheap_steps=5, robust_steps=5,
                          robust_inspect=['dcgan', 'vae'], robust_n=4)


def test_metrics(run):
    m = json.loads((run / 'metrics.json').read_text())
    assert m['params']['zoo_size'] == 'tiny' and m['params']['n'] == 8 and m['params']['alpha'] == 0.2
    M = m['metrics']
    assert set(M['per_model']) == set(ZOO)
    for k, v in M['per_model'].items():
        for c in ('acc_real', 'tpr_real', 'fpr_own', 'auc_real', 'acc_others_min', 'auc_others'):
            assert 0 <= v[c] <= 1, (k, c, v[c])
        assert v['wall_s'] > 0 and v['cpu_s'] > 0
    assert 0 <= M['min_acc_real'] <= M['mean_acc_real'] <= 1
    assert M['zoo_train_wall_s'] > 0 and M['zoo_train_cpu_s'] > 0 and M['eval_wall_s'] > 0
    p = pd.read_csv(run / 'pairs_ronan.csv').set_index(['inspected', 'source'])   # metrics.json agrees with the pair table
    for k in ZOO:
        assert np.isclose(M['per_model'][k]['auc_real'], p.loc[(k, 'real'), 'auc']) and np.isclose(M['per_model'][k]['acc_real'], p.loc[(k, 'real'), 'acc'])
    assert np.isclose(M['mean_auc_real'], np.mean([M['per_model'][k]['auc_real'] for k in ZOO]))
    assert set(M['methods']) >= {'latenttracer/vae', 'latenttracer/flow', 'aedr/vae', 'aedr/flow', 'ronan/vae', 'ronan/flow'}


def test_tables(run):
    s = pd.read_csv(run / 'summary_ronan.csv', index_col=0)
    assert list(s.index) == ZOO and {'threshold', 'fpr_own', 'acc_real', 'auc_real', 'acc_others_min', 'auc_others'} <= set(s.columns)
    p = pd.read_csv(run / 'pairs_ronan.csv')
    assert len(p) == 25 and set(p.source) == set(ZOO) | {'real'}
    assert ((p.acc >= 0) & (p.acc <= 1) & (p.auc >= 0) & (p.auc <= 1)).all()
    # accuracy on a balanced pair = (1 - FPR + TPR) / 2
    assert np.allclose(p.acc, (1 - p.fpr + p.tpr) / 2)
    sc = pd.read_csv(run / 'scores_ronan.csv')
    assert len(sc) == 5 * (10 + 8 * 6) and (sc.score > 0).all() and (sc.complexity > 0).all()
    r = pd.read_csv(run / 'rules.csv')
    assert set(r.rule) == {'quantile', 'grubbs', 'kde'} and len(r) == 8
    assert r[['fpr_own_mean', 'acc_real_mean', 'acc_others_min', 'tpr_real_mean']].apply(lambda c: c.between(0, 1).all()).all()
    z = pd.read_csv(run / 'zoo.csv', index_col=0)
    assert list(z.index) == ZOO and (z.img_size == 16).all() and z.upsampling.nunique() == 5
    me = pd.read_csv(run / 'methods.csv')
    assert set(me.method) == {'ronan', 'latenttracer', 'aedr', 'aeroblade'} and set(me.inspected) == {'vae', 'flow'}


def test_cost_cascade_robustness(run):
    c = pd.read_csv(run / 'cost.csv')
    assert {'ronan', 'ronan-5', 'cascade', 'aedr', 'latenttracer', 'aeroblade'} <= set(c.method)
    assert set(c[c.method == 'cascade'].inspected) == set(ZOO) and (c.s_per_image > 0).all()
    cas = c[c.method == 'cascade'].set_index('inspected')
    assert cas.frac_full.between(0, 1).all() and cas[['acc_real', 'acc_others_min', 'fpr_own']].apply(lambda v: v.between(0, 1).all()).all()
    # cost = the cheap stage (AEDR where the model has an autoencoder, else the short inversion) + the undecided share of the full test
    per = c.set_index(['method', 'inspected']).s_per_image
    for k in ZOO:
        cheap = per[('aedr', k)] if k in ('vae', 'flow') else per[('ronan-5', k)]
        assert np.isclose(cas.s_per_image[k], cheap + cas.frac_full[k] * per[('ronan', k)], atol=2e-4), k   # CSV: 4 decimals
    r = pd.read_csv(run / 'robustness.csv')
    assert list(r.perturbation) == ['clean', 'jpeg 95', 'jpeg 75', 'jpeg 50', 'resize 0.5', 'crop 0.9', 'noise 0.00784']
    assert r.drop(columns='perturbation').apply(lambda v: v.between(0, 1).all()).all()
    M = json.loads((run / 'metrics.json').read_text())['metrics']
    assert set(M['cascade']) == set(ZOO) and len(M['robustness']) == 7 and 'cascade' in M['cost_mean']
    rp = pd.read_csv(run / 'robustness_per_model.csv')                  # the robustness runs inspect only robust_inspect
    assert len(rp) == 7 * 2 and set(rp.inspected) == {'dcgan', 'vae'}
    assert np.allclose(rp.groupby('perturbation', sort=False).acc_real.mean().to_numpy(), r.acc_real_mean.to_numpy())
    t = pd.read_csv(run / 'targets.csv', index_col=0)                    # issue 15's targets, per model
    s = pd.read_csv(run / 'summary_ronan.csv', index_col=0)
    assert list(t.index) == ZOO and (t.acc_real_met == (s.acc_real >= 0.98)).all() and (t.auc_others_min_met == (s.auc_others_min >= 0.99)).all()
    assert (t.all_met == t[['acc_real_met', 'acc_others_min_met', 'auc_real_met', 'auc_others_min_met']].all(1)).all()
    cv = pd.read_csv(run / 'cascade_vs_full.csv', index_col=0)
    assert list(cv.index) == ZOO and (cv.cost_met == (cv.s_per_image <= 1)).all() and set(M['targets']) == set(ZOO)


def test_figures(run):
    for f in ('zoo_samples', 'roc_ronan', 'score_hist_ronan', 'reconstructions_ronan', 'accuracy_vs_cost', 'robustness'):
        p = run / f'{f}.png'
        assert p.exists() and p.read_bytes()[:4] == b'\x89PNG', f
    assert (run / 'origin_attribution.ipynb').exists() and (run / 'scores').is_dir()


def test_cheap_only_pixel_ddim(tmp_path):
    "A model too costly to invert (pixel DDIM) inspected by its cheap stage alone: DDIM-inversion reconstruction."
    from attrib.experiments import run_experiment
    run = run_experiment('origin_attribution', out_dir=tmp_path / 'run', zoo_size='tiny', names=['dcgan', 'vae', 'ddim'],
                         cheap_only=['ddim'], n=4, n_calib=6, steps=10, restarts=1, lr=0.05, patience=5, n_candidates=4,
                         alpha=0.2, seed=0, threads=1, cheap_steps=3, compare=False, robust=False)
    s = pd.read_csv(run / 'summary_ronan.csv', index_col=0)
    assert list(s.index) == ['dcgan', 'vae']                                     # never the full inversion of ddim
    t = pd.read_csv(run / 'targets_cheap_only.csv', index_col=0)
    assert list(t.index) == ['ddim'] and t.test.tolist() == ['latenttracer'] and (t.s_per_image > 0).all()
    assert t[['acc_real', 'acc_others_min', 'auc_real', 'auc_others_min', 'fpr_own']].apply(lambda v: v.between(0, 1).all()).all()
    assert (t.all_met == t[['acc_real_met', 'acc_others_min_met', 'auc_real_met', 'auc_others_min_met']].all(1)).all()
    c = pd.read_csv(run / 'cost.csv')
    assert c[c.method == 'encoder-recon'].inspected.tolist() == ['ddim'] and set(c[c.method == 'cascade'].inspected) == {'dcgan', 'vae'}
    M = json.loads((run / 'metrics.json').read_text())
    assert set(M['metrics']['targets_cheap_only']) == {'ddim'} and M['params']['cheap_only'] == ['ddim']
    assert set(M['metrics']['per_model']) == {'dcgan', 'vae'}
    # 0 steps from the DDIM inversion: every score of ddim is one reconstruction, never an Adam step
    sc = pd.concat([pd.read_csv(f) for f in (run / 'scores').glob('latenttracer-ddim-*.csv')])
    assert len(sc) == 6 + 4 * 4 and (sc.n_steps == 0).all() and (sc.score > 0).all()
