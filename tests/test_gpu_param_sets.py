"""Each experiment's GPU parameter set (`attrib.experiments.PRESETS[name]['gpu']`, the one the README documents) runs
through on the CPU at tiny size: only what a CPU cannot do is overridden (device, mixed precision, the pretrained ViT
weights that are not reachable offline, and the sizes), so the GPU code paths (fresh augmentations, full forward passes
instead of the cached trunk, a ViT backbone, DINO and MoCo alignment, many restarts) stay working."""
import json

import numpy as np
import pandas as pd
import pytest

CPU = dict(device='cpu')
CONCEPT_TINY = dict(data_size='tiny', seeds=[0], sweep_seeds=[0], lambda_sweep=[0.0, 1.0], epochs=1,
                    batch_size=16, proj_hidden=64, proj_dim=16, pred_hidden=64, abc_epochs=1, abc_batch_size=16,
                    abc_val_every=1, cca_k=[4], whiten_k=[8], dino_out_dim=64, calib_distractors=20, n_examples=2,
                    eval_batch_size=64, threads=1,
                    backbone='vit_tiny', weights='random', img_size=32, amp=None)   # a small random-init ViT


def _run(name, tmp_path, **overrides):
    from attrib.experiments import run_experiment, PRESETS
    out = run_experiment(name, out_dir=tmp_path / name, preset='gpu', **{**CPU, **overrides})
    params = json.loads((out / 'params.json').read_text())['params']
    gpu = PRESETS[name]['gpu']
    kept = {k: v for k, v in gpu.items() if k not in {**CPU, **overrides}}
    assert kept and all(params[k] == v for k, v in kept.items()), (kept, params)   # the GPU settings really ran
    return out, kept


@pytest.mark.parametrize('method', ['dino', 'moco'])
def test_concept_attribution_gpu_set(tmp_path, method):
    out, kept = _run('concept_attribution', tmp_path, method=method, **CONCEPT_TINY)
    assert kept['aug_bank'] is None and kept['trunk_cache'] is False
    res = pd.read_csv(out / 'results.csv')
    assert {'raw', 'A&D', 'align-only'} <= set(res.method)
    vals = res[[c for c in res.columns if c.endswith('_mean')]].to_numpy()
    assert np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 1).all()
    assert json.loads((out / 'metrics.json').read_text())['params']['method'] == method


def test_origin_attribution_gpu_set(tmp_path):
    out, kept = _run('origin_attribution', tmp_path, zoo_size='tiny', names=['dcgan', 'vae'], n=6, n_calib=6, steps=20,
                     compare=False)
    assert kept['restarts'] == 8
    m = json.loads((out / 'metrics.json').read_text())['metrics']
    assert m


def test_model_attribution_gpu_set(tmp_path):
    out, kept = _run('model_attribution', tmp_path, seeds=[0, 1], synth_steps=10, synth_channels=8, epochs=1,
                     steps_per_epoch=2, P=4, K=2, zoo_size='tiny', n_archs=6, holdout_archs=2, synth_root=str(tmp_path / 'synth'),
                     n_per_model=12, n_per_synth=8, n_bank=16, n_real_train=40, n_ref=10, n_ffd=8, n_shot=4, n_pairs=50,
                     n_splits=2, backbone='mobilenetv2', backbone_img_size=32)   # CLIP ViT-B/16 weights are not reachable offline
    assert kept['arch'] == 'resnet50' and kept['amp'] is True
    m = json.loads((out / 'metrics.json').read_text())['metrics']
    assert 'results' in m
