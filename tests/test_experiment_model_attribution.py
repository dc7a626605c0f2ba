"""experiments/model_attribution.ipynb end to end with tiny sizes (16 x 16 'tiny' zoo, 8 synthetic architectures, one short epoch):
every output exists and holds sane values. Numbers here say nothing about the method; the default run does."""
import json

import numpy as np
import pandas as pd
import pytest

METHODS = {'synthesized (ours)', 'synthesized (ours) + LR (max softmax)', 'closed-set (zoo subset)', 'raw spectrum',
           'mobilenetv2 frozen', 'mobilenetv2 frozen + LR (max softmax)'}
SETS = {'zoo (all unseen)', 'zoo not in closed-set training', 'held-out synthetic architectures'}
# the five of ZOO_NAMES and two ZOO_WORLD siblings: dcgan-s1 (another seed) and vae-pa (other photos)
ZOO = ['dcgan', 'vae', 'sngan', 'wgangp', 'flow', 'dcgan-s1', 'vae-pa']
SIBS = 'zoo, same-architecture siblings (other seed or photos)'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    from attrib.experiments import run_experiment
    d = tmp_path_factory.mktemp('model_attribution')
    out = run_experiment('model_attribution', out_dir=d / 'run', zoo_size='tiny', n_archs=8, holdout_archs=3, synth_steps=10,
                         synth_root=str(d / 'synth'), epochs=1, steps_per_epoch=4, P=4, K=4, n_per_model=20, n_per_synth=15, n_bank=40,
                         n_real_train=100, extra_zoo_seeds=[1], zoo_names=ZOO, n_ref=20, n_ffd=10, n_shot=5, n_pairs=200, n_splits=2, backbone_img_size=32, seed=0)
    return out


def test_metrics(run):
    m = json.loads((run / 'metrics.json').read_text())
    assert m['params']['n_archs'] == 8 and m['params']['zoo_size'] == 'tiny'
    M = m['metrics']
    assert set(M) >= {'results', 'robustness', 'fidelity', 'timing', 'sizes', 'targets', 'synthesized_vs_closed_set', 'extractor'}
    assert m['params']['epochs'] == 1 and m['params']['lr'] == 2e-3          # an override, and a value from the preset
    assert set(M['results']) == SETS
    assert M['sizes'] == {**M['sizes'], 'n_synthetic_models': 8, 'n_train_models': 5, 'n_heldout_models': 3, 'n_zoo_models': 7, 'img_size': 16}
    for s, methods in M['results'].items():
        assert {'synthesized (ours)', 'raw spectrum', 'mobilenetv2 frozen'} <= set(methods)
        assert ('closed-set (zoo subset)' in methods) == (s != 'zoo (all unseen)')   # never scored on the models it trained on
        for name, r in methods.items():
            for k in ('open_set_auroc', 'open_set_oscr', 'open_set_closed_acc'): assert 0 <= r[k] <= 1, (s, name, k, r[k])
            if 'LR' not in name:
                assert 0 <= r['open_set_auroc_pose'] <= r['open_set_auroc'] + 1e-9 and 0 <= r['open_set_oscr_pose'] <= 1
                assert 0 <= r['verification_acc'] <= r['verification_acc_test_threshold'] <= 1
            if 'LR' not in name:
                n_cls = r['n_models']
                assert 0 <= r['identification_acc'] <= 1 and 0 <= r['identification_f1'] <= 1 and 0 <= r['verification_auc'] <= 1
                assert r['open_set_oscr'] <= r['open_set_auroc'] + 1e-9
    assert M['results']['zoo (all unseen)']['synthesized (ours)']['n_models'] == 7
    assert M['results']['zoo not in closed-set training']['raw spectrum']['n_models'] == 5
    assert M['results']['held-out synthetic architectures']['raw spectrum']['n_images'] == 45
    f = M['fidelity']
    assert all(f[k] >= 0 for k in ('FFD(zoo, synthesized)', 'FFD(zoo, untrained synthetic)', 'FFD(zoo, real crops)'))
    assert len(f['per_zoo_model']) == 7 and f['diversity synthesized'] > 0
    assert all(M['timing'][k] > 0 for k in ('synthesis_wall_s', 'extractor_train_s', 'closed_train_s'))
    assert set(M['synthesized_vs_closed_set']) == {'identification_acc', 'verification_auc', 'open_set_auroc'}
    assert {k: v['target'] for k, v in M['targets'].items()} == {'identification_acc': 0.95, 'verification_auc': 0.97, 'open_set_auroc': 0.95}
    ours = M['results']['zoo (all unseen)']['synthesized (ours)']
    assert all(v['measured'] == ours[k] and v['met'] == (ours[k] >= v['target']) for k, v in M['targets'].items())
    rob = M['robustness']
    assert set(rob) == {'synthesized (ours)', 'raw spectrum', 'mobilenetv2 frozen'}
    for name, rows in rob.items():
        assert list(rows) == ['clean', 'jpeg 95', 'jpeg 75', 'jpeg 50', 'resize 0.5 and back', 'centre crop 90%', 'gaussian noise 2/255']
        assert all(0 <= r['identification_acc'] <= 1 and 0 <= r['open_set_auroc'] <= 1 for r in rows.values())
        assert rows['clean']['identification_acc'] == pytest.approx(M['results']['zoo (all unseen)'][name]['identification_acc'])
    sa = M['same_architecture']
    three = ('synthesized (ours)', 'raw spectrum', 'mobilenetv2 frozen')
    assert set(sa) == {f'{s} | {n}' for s in ('zoo, several seeds per architecture', SIBS) for n in three}
    for k, r in sa.items():
        assert (r['n_models'], r['n_architectures']) == ((4, 2) if k.startswith(SIBS) else (10, 5)), k
        if k.startswith(SIBS): assert r['models'] == 'dcgan, vae, dcgan-s1, vae-pa'
        assert all(0 <= r[k] <= 1 for k in ('identification_acc', 'same_arch_verification_auc', 'same_arch_verification_acc', 'open_set_auroc'))
    assert M['extractor']['n_classes'] == 5 and len(M['extractor']['data']) == 16


def test_tables_and_figures(run):
    res = pd.read_csv(run / 'results.csv')
    assert list(res.columns[:2]) == ['eval_set', 'method'] and {'identification_acc', 'verification_auc', 'open_set_auroc', 'open_set_oscr'} <= set(res.columns)
    assert set(res.eval_set) == SETS and set(res.method) == METHODS
    assert res.loc[res.method == 'synthesized (ours)', 'identification_acc'].notna().all()
    syn = pd.read_csv(run / 'synthetic_models.csv')
    assert len(syn) == 8 and syn.psnr.gt(0).all() and set(syn.columns) >= {'name', 'arch', 'seed', 'psnr', 'train_s', 'cached'}
    hist = pd.read_csv(run / 'training_history_synthesized.csv'); assert len(hist) == 1 and np.isfinite(hist.ce).all()
    fid = pd.read_csv(run / 'fidelity_per_zoo_model.csv'); assert len(fid) == 7 and fid['FFD to nearest synthesized'].ge(0).all()
    rob = pd.read_csv(run / 'robustness.csv'); assert len(rob) == 3 * 7 and {'method', 'perturbation', 'open_set_auroc'} <= set(rob.columns)
    for name in ('average_spectra', 'embedding_map', 'confusion_matrix', 'roc_curves', 'robustness'):
        assert (run / f'{name}.png').read_bytes()[:4] == b'\x89PNG'
    assert (run / 'ckpt_synthesized' / 'final.pt').exists() and (run / 'ckpt_closed' / 'final.pt').exists()
    from attrib.model.fingerprint import extractor_info
    info = extractor_info(run / 'extractor.safetensors'); assert info['preset']['n_archs'] == 8 and info['preset']['zoo_size'] == 'tiny'
    assert (run / 'model_attribution.ipynb').exists()
