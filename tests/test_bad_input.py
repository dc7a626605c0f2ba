"""The `attrib` command on bad input: one line `attrib: error: ...` naming the file, nothing half-written, and no silent wrong answer.

Each test builds a small AbC-layout dataset of its own (random 32 x 32 images) in a temporary folder and runs the real command,
in this process (`attrib.cli.main`) or, for Ctrl-C, in a child process. Issue 11, section 2."""
import contextlib, io, json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BB = ['resnet18:random', '--img-size', '32']   # a random-init CPU backbone at a tiny size: fast, offline, deterministic


def make_dataset(root: Path, n_models: int = 3, n_distr: int = 12, size: int = 32) -> Path:
    "A small AbC layout: object models with one exemplar and two synthetic images per type, plus distractors."
    from attrib.concept.abc_data import write_abc_split, write_distractor_list
    rng = np.random.default_rng(0)
    def img(rel):
        (root/rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root/rel)
        return rel
    models = [dict(exemplar=[img(f'dataset/exemplar/m{m}/0.png')], class_id=f'm{m}', category='toy',
                   synth={t: [img(f'dataset/synth/{t}/m{m}/{i}.png') for i in range(2)] for t in ('gpt', 'media')})
              for m in range(n_models)]
    write_abc_split(root, 'test_seen_object', models)
    write_distractor_list(root, [img(f'dataset/laion_subset/{i:05d}.png') for i in range(n_distr)])
    return root


def run(argv) -> tuple[int, str, str]:
    "`attrib ARGV` in this process: (exit status, stdout, stderr); an uncaught exception (a traceback) fails the test."
    from attrib.cli import main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    if isinstance(code, str): err.write(code + '\n'); code = 1     # sys.exit('message') prints it and exits 1
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(res, *parts):
    code, _, err = res
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith('attrib: error:'), res
    for p in parts: assert str(p) in lines[0], (p, lines[0])


@pytest.fixture
def ds(tmp_path, monkeypatch):
    monkeypatch.setenv('ATTRIB_DATA', str(tmp_path/'data'))
    return make_dataset(tmp_path/'abc')


def cache_files(cache: Path) -> dict[str, Path]:
    return {p.stem: p for p in cache.rglob('*.pt')}


def test_replaced_image_is_extracted_again(ds, tmp_path):
    "Item 3: after an image is replaced in place, extract (and so evaluate) serves its new features, not the cached old ones."
    c = tmp_path/'cache'
    assert run(['extract', ds, *BB, '--cache-dir', c])[0] == 0
    f = cache_files(c)['distractors']; before = torch.load(f, weights_only=True)
    Image.new('RGB', (32, 32), (255, 0, 0)).save(ds/'dataset/laion_subset/00005.png')
    assert run(['extract', ds, *BB, '--cache-dir', c])[0] == 0
    after = torch.load(f, weights_only=True)
    assert not torch.equal(before['feats'][5], after['feats'][5])
    keep = [i for i in range(12) if i != 5]
    assert torch.equal(before['feats'][keep], after['feats'][keep])


def test_nan_weights_fail_at_extraction(ds, tmp_path):
    "Item 5: weights that give NaN stop `extract` with the backbone named; no cache is written."
    from attrib.backbones import create_backbone
    sd = create_backbone('resnet18', weights=None).model.state_dict()
    sd['conv1.weight'].fill_(float('nan')); torch.save(sd, tmp_path/'nan.pth')
    c = tmp_path/'cache'
    assert_one_line_error(run(['extract', ds, f'resnet18:{tmp_path}/nan.pth', '--img-size', '32', '--cache-dir', c]),
                          'backbone resnet18@32', 'non-finite features')
    assert not cache_files(c)


def test_paths_outside_root_refused(ds, tmp_path):
    "Item 6: split paths that leave the root are refused (the JSON named), unless --allow-outside-root."
    (tmp_path/'outside').mkdir(); Image.new('RGB', (32, 32), 7).save(tmp_path/'outside'/'secret.png')
    p = ds/'dataset/json/test_seen_object.json'; E = json.loads(p.read_text())
    E[0]['exemplar'] = ['../outside/secret.png']; E[1]['exemplar'] = [str(tmp_path/'outside'/'secret.png')]
    p.write_text(json.dumps(E))
    c = tmp_path/'cache'
    assert_one_line_error(run(['extract', ds, *BB, '--cache-dir', c]), 'test_seen_object.json', 'leave the dataset root')
    assert not cache_files(c)
    assert run(['extract', ds, *BB, '--cache-dir', c, '--allow-outside-root'])[0] == 0


def _corrupt_weights(ds, tmp):
    (tmp/'empty.safetensors').write_bytes(b''); return ['extract', ds, f'resnet18:{tmp}/empty.safetensors'], 'empty.safetensors'

def _latin1_split(ds, tmp):
    p = ds/'dataset/json/test_seen_object.json'; p.write_bytes(p.read_text().replace('toy', 'caf\u00e9').encode('latin-1'))
    return ['extract', ds, *BB], 'test_seen_object.json: not valid JSON: not UTF-8'

def _latin1_distractors(ds, tmp):
    (ds/'dataset/laion_subset.txt').write_bytes('dataset/laion_subset/caf\u00e9.png\n'.encode('latin-1'))
    return ['extract', ds, *BB], 'laion_subset.txt: distractor list is not UTF-8'

def _deep_json(ds, tmp):
    (ds/'dataset/json/test_seen_object.json').write_text('[' * 100_000 + ']' * 100_000)
    return ['extract', ds, *BB], 'test_seen_object.json: not valid JSON for attrib: nested too deeply'

def _no_queries(ds, tmp):
    p = ds/'dataset/json/test_seen_object.json'; E = json.loads(p.read_text())
    p.write_text(json.dumps([{**e, 'synth': {'gpt': []}} for e in E]))
    return ['evaluate', ds, *BB, '--cache-dir', tmp/'cache'], "split 'test_seen_object' has no queries"

def _no_test_split(ds, tmp):
    (ds/'dataset/json/test_seen_object.json').rename(ds/'dataset/json/train_all.json')
    return ['evaluate', ds, *BB, '--cache-dir', tmp/'cache'], 'no test split to evaluate'

def _nan_features(ds, tmp):
    assert run(['extract', ds, *BB, '--cache-dir', tmp/'cache'])[0] == 0
    f = cache_files(tmp/'cache')['distractors']; d = torch.load(f, weights_only=True); d['feats'][3, 0] = float('inf'); torch.save(d, f)
    return ['evaluate', ds, *BB, '--cache-dir', tmp/'cache'], 'distractor_feats holds 1 non-finite'

def _dims_mismatch(ds, tmp):
    assert run(['extract', ds, *BB, '--cache-dir', tmp/'cache'])[0] == 0
    f = cache_files(tmp/'cache')['test_seen_object']; d = torch.load(f, weights_only=True); d['feats'] = d['feats'][:, :64]
    torch.save(d, f)
    return ['evaluate', ds, *BB, '--cache-dir', tmp/'cache'], f"{cache_files(tmp/'cache')['distractors']} has D=512, {f} has D=64"

@pytest.mark.parametrize('case', [_corrupt_weights, _latin1_split, _latin1_distractors, _deep_json, _no_queries, _no_test_split,
                                  _nan_features, _dims_mismatch], ids=lambda f: f.__name__.strip('_'))
def test_one_line_error(ds, tmp_path, case):
    "Item 8: each of these is one line `attrib: error: ...` naming what is wrong, exit status 1, never a traceback."
    argv, why = case(ds, tmp_path)
    assert_one_line_error(run(argv), why)


def test_on_error_skip(ds, tmp_path):
    "Item 10: an unreadable image stops extract/evaluate by default; with --on-error skip it is left out and reported."
    (ds/'dataset/synth/gpt/m1/0.png').write_bytes(b'not a png'); (ds/'dataset/laion_subset/00003.png').unlink()
    c, out = tmp_path/'cache', tmp_path/'out'
    assert_one_line_error(run(['extract', ds, *BB, '--cache-dir', c]), 'dataset/laion_subset/00003.png: file not found')
    code, so, _ = run(['extract', ds, *BB, '--cache-dir', c, '--on-error', 'skip'])
    assert code == 0 and 'skipped\tdistractors\tdataset/laion_subset/00003.png\t' in so and 'dataset/synth/gpt/m1/0.png' in so, so
    code, so, _ = run(['evaluate', ds, *BB, '--cache-dir', c, '--out', out, '--on-error', 'skip'])
    assert code == 0 and 'n_skipped_queries' in so, so
    import pandas as pd
    t = pd.read_csv(next(out.glob('abc_eval_*[0-9].csv')), index_col=[0, 1])
    assert t.loc[('test_seen_object', 'gpt'), 'n_skipped_queries'] == 1 and t.loc[('test_seen_object', 'all'), 'n_queries'] == 11
    sk = pd.read_csv(next(out.glob('*_skipped.csv')))
    assert sorted(sk.path) == ['dataset/laion_subset/00003.png', 'dataset/synth/gpt/m1/0.png']
    assert_one_line_error(run(['evaluate', ds, *BB, '--cache-dir', c]), '00003.png: file not found')   # raise stays the default


def test_ctrl_c_leaves_nothing_half_written(tmp_path):
    "Item 8, Ctrl-C: exit 130 with one line, no temporary or partial file left; the same command then finishes."
    ds = make_dataset(tmp_path/"abc", n_distr=600)
    c = tmp_path/'cache'
    env = {**os.environ, 'ATTRIB_DATA': str(tmp_path/'data'), 'OMP_NUM_THREADS': '1', 'ATTRIB_PROGRESS': '0'}
    # 96 px and batches of 2: seconds of work after the first shard appears, so the signal lands mid-extraction even on a
    # loaded machine (at 32 px the rest took well under a second and the job could finish first); no loader workers (a signal
    # that lands while they fork can be lost inside CPython)
    cmd = [sys.executable, '-c', 'from attrib.cli import main; main()', 'extract', str(ds), 'resnet18:random',
           '--img-size', '96', '--cache-dir', str(c), '--batch-size', '2']
    # SIGINT's default action restored in the child: a job started in the background (nohup, `&` in a script: how CI may run us)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the signal would do nothing
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not list(c.rglob('shard_*.pt')) and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.05)
    os.killpg(p.pid, signal.SIGINT)                               # as a terminal's Ctrl-C does: to the whole process group
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.strip().splitlines() == [err.strip()] and 'interrupted' in err, (p.returncode, err[-2000:])
    assert not [f for f in c.rglob('*') if f.name.endswith('.tmp')], 'a temporary file was left behind'
    assert not (c.exists() and [f for f in c.rglob('distractors.pt')]), 'a partial cache file was written'
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert {f.stem for f in c.rglob('*.pt')} == {'distractors', 'test_seen_object'}
