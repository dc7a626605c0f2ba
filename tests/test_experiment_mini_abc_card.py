"""experiments/mini_abc_card.ipynb on the tiny mini-AbC: the card is written (run folder and next to the data), identifies the build by
its content hash, and its numbers agree with the tables and the audit it reports."""
import json
import math

import pandas as pd


def test_mini_abc_card_tiny(tmp_path):
    from attrib.experiments import run_experiment
    from attrib.concept.abc_data import AbCDataset
    from attrib.concept.mini_abc import build_mini_abc
    root = build_mini_abc(size='tiny', seed=0)
    out = run_experiment('mini_abc_card', out_dir=tmp_path / 'run', data_size='tiny', batch_size=64)
    for f in ('card.json', 'card.md', 'metrics.json', 'baselines.csv', 'mini_abc_card.ipynb'): assert (out / f).is_file(), f
    card = json.loads((out / 'card.json').read_text())
    assert card == json.loads((root / 'card.json').read_text())
    man = json.loads((root / 'manifest.json').read_text())
    assert card['dataset']['content_hash'] == man['content_hash'] and card['dataset']['version'] == man['version'] >= 4
    ds = AbCDataset(root)
    splits = [s for s in ds.split_names() if ds.split_info(s)['role'] == 'test'] + ['val']
    b = pd.read_csv(out / 'baselines.csv')
    assert set(b.method) == {'mobilenetv2', 'mobilenetv2:random', 'colour histogram'} and set(b.split) == set(splits)
    assert ((0 <= b['R@5']) & (b['R@5'] <= b['R@10']) & (b['R@10'] <= b['R@100']) & (b['R@100'] <= 1)).all()
    p = card['properties']
    assert len(p) == 6 and all(isinstance(v['met'], bool) for v in p.values())
    # property 1/2 verdicts follow from the reported table
    a = pd.DataFrame(card['baselines']); a = a[a.synth_type == 'all'].set_index(['method', 'split'])   # full precision (the CSV has 4 digits)
    c = b[b.synth_type == 'all'].set_index(['method', 'split'])
    assert ((c['mAP'] - a.loc[c.index, 'mAP']).abs() < 1e-4).all()
    for sp, r5 in p['2 signal with headroom']['imagenet_r5'].items(): assert math.isclose(r5, a.loc[('mobilenetv2', sp), 'R@5'], abs_tol=1e-4)
    for sp, rat in p['1 learned features beat colour statistics']['ratios'].items():
        want = a.loc[('mobilenetv2', sp), 'mAP'] / max(a.loc[('colour histogram', sp), 'mAP'], 1e-12)
        assert math.isclose(rat['mAP vs colour histogram'], want, rel_tol=1e-3), sp
    assert p['3 val is a proxy (card part)']['val_models'] == ds.split_info('val')['n_models']
    assert p['4 no leakage']['met'] and card['audit']['clean'] and card['audit']['n_shared'] == 0     # the tiny build is clean by construction
    assert set(card['texture']) == {s for s in splits if ds.split_info(s)['centric'] == 'style'}
    assert 'content hash' in (out / 'card.md').read_text()
    m = json.loads((out / 'metrics.json').read_text())
    assert m['params']['data_size'] == 'tiny' and m['metrics']['dataset']['content_hash'] == man['content_hash']
