"""experiments/concept_baselines.ipynb on the tiny mini-AbC with the smallest settings: its outputs exist and make sense."""
import json
from pathlib import Path

import pandas as pd
import pytest


def test_concept_baselines_tiny(tmp_path):
    from attrib.experiments import run_experiment
    from attrib.concept.abc_data import AbCDataset
    from attrib.concept.mini_abc import build_mini_abc
    root = build_mini_abc(size='tiny', seed=0)          # cached under data/ (shared with the other mini-AbC tests)
    out = run_experiment('concept_baselines', out_dir=tmp_path / 'run', data_root=str(root),
                         backbones=['mobilenetv2', 'resnet18:random'], img_size=32, batch_size=16, curve_max_k=30, n_examples=2)
    m = json.loads((out / 'metrics.json').read_text())
    ds = AbCDataset(root)
    splits = [s for s in ds.split_names() if ds.split_info(s)['role'] == 'test']
    assert m['params']['backbones'] == ['mobilenetv2', 'resnet18:random'] and m['metrics']['dataset']['splits'] == splits
    for b in ('mobilenetv2', 'resnet18:random'):
        for sp in splits:
            types = ds.split_info(sp)['synth_types'] + ['all']
            for t in types:
                r = m['metrics'][f'{b}/{sp}/{t}']
                assert 0 < r['mAP'] <= 1 and 0 <= r['R@5'] <= r['R@10'] <= r['R@100'] <= 1, (b, sp, t, r)
                assert r['n_queries'] > 0
            n_all = m['metrics'][f'{b}/{sp}/all']['n_queries']
            assert n_all == len(ds.queries(sp)[0]) == sum(m['metrics'][f'{b}/{sp}/{t}']['n_queries'] for t in types[:-1])
        assert m['metrics']['backbones'][b]['seconds'] > 0
    tab = pd.read_csv(out / 'baseline_table.csv')
    assert {'backbone', 'split', 'synth_type', 'centric', 'seen', 'n_queries', 'mAP', 'R@5', 'R@10', 'R@100'} <= set(tab.columns)
    assert len(tab) == 2 * sum(len(ds.split_info(s)['synth_types']) + 1 for s in splits)
    cur = pd.read_csv(out / 'recall_curves.csv')
    assert set(cur.K) == set(range(1, 31)) and cur.groupby(['backbone', 'split']).recall.apply(lambda r: r.is_monotonic_increasing).all()
    r5 = tab[tab.synth_type == 'all'].set_index(['backbone', 'split'])['R@5']
    c5 = cur[cur.K == 5].set_index(['backbone', 'split'])['recall']
    assert (abs(r5.sort_index() - c5.sort_index()) < 1e-3).all()        # the curve passes through the table's R@5
    for png in ('recall_at_k.png', 'retrieval_examples.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG'
    assert any((out / 'features').rglob('distractors.pt'))               # features were cached under their key
