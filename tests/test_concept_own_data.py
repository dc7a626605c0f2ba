"""Concept attribution on a user's own folders, end to end through the `attrib` command line.

The folders are made here: a gallery of crops of real photographs (attrib.sources), and queries whose known source is one of the
gallery images, recompressed as JPEG, flipped and recoloured. `attribute` must find the source in its top 5 for most queries
(the measured rate is printed and written to tests' tmp folder as hit_rate.json). Also: resuming after a real kill, appending,
approximate indexes, bad input as one `attrib: error:` line naming the file, calibration, A&D fine-tuning on two folders whose
checkpoint `index --checkpoint` takes, `download-abc` against a fake hub served on 127.0.0.1, and AbC's own feature files.
"""
import hashlib, http.server, io, json, os, re, signal, subprocess, sys, tarfile, threading, time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
BACKBONE, IMG = 'mobilenetv2', 96          # ImageNet MobileNetV2 (offline weights package), small input: fast on a CPU
N_GALLERY, N_SOURCES = 120, 12
VARIANTS = ('jpeg', 'flip', 'recolour', 'combined')


def attrib(*args):
    "Run `attrib` in this process; returns stdout-less exit status 0 or the SystemExit message."
    from attrib.cli import main
    try: main([str(a) for a in args])
    except SystemExit as e: return e.code
    return 0


def attrib_proc(*args, env=None, **kw):
    "Run `attrib` as a real process (what a user types)."
    e = {**os.environ, 'PYTHONPATH': str(ROOT), 'ATTRIB_PROGRESS': '0', 'OMP_NUM_THREADS': '1', **(env or {})}
    return subprocess.Popen([sys.executable, '-c', 'from attrib.cli import main; main()', *map(str, args)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def make_variant(im: Image.Image, kind: str) -> Image.Image:
    if kind == 'combined': return make_variant(make_variant(make_variant(im, 'flip'), 'recolour'), 'jpeg')
    if kind == 'jpeg':
        b = io.BytesIO(); im.save(b, format='JPEG', quality=30); return Image.open(io.BytesIO(b.getvalue())).convert('RGB')
    if kind == 'flip': return im.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(ImageEnhance.Color(im).enhance(1.6)).astype(np.float32) * np.array([1.15, 0.9, 0.8])   # saturate, warm tint
    return Image.fromarray(np.clip(a + 10, 0, 255).astype(np.uint8))


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    from attrib.sources import random_crops
    t = tmp_path_factory.mktemp('own')
    crops, names = random_crops(N_GALLERY, 128, seed=3)
    g = t/'gallery'
    for i, (c, n) in enumerate(zip(crops, names)):
        p = g/('part_a' if i % 2 else 'part_b')/f'{n}_{i:03d}.png'; p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(c).save(p)
    (g/'part_b'/'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 20)
    q = t/'queries'; q.mkdir()
    rng = np.random.default_rng(0)
    src = {}
    for i in sorted(rng.choice(N_GALLERY, N_SOURCES, replace=False)):
        rel = f"{'part_a' if i % 2 else 'part_b'}/{names[i]}_{i:03d}.png"
        im = Image.open(g/rel).convert('RGB')
        for v in VARIANTS:
            f = q/f'{Path(rel).stem}__{v}.jpg'; make_variant(im, v).save(f, quality=92); src[f.name] = rel
    return dict(t=t, gallery=g, queries=q, source=src)


@pytest.fixture(scope='module')
def index(folders):
    ix = folders['t']/'ix'
    assert attrib('index', folders['gallery'], '--backbone', BACKBONE, '--img-size', IMG, '--out', ix, '--shard-size', 16) == 0
    return ix


def test_index_and_attribute(folders, index, capsys):
    from attrib.concept.index import Index
    m = json.loads((index/'manifest.json').read_text())
    assert 'part_b/corrupt.png' in m['bad'] and 'corrupt.png' in m['bad']['part_b/corrupt.png']['error']
    ix = Index.open(index)
    assert len(ix) == N_GALLERY and m['embedder']['backbone'] == BACKBONE and m['embedder']['preprocessing']['img_size'] == IMG
    assert len(m['shards']) == -(-(N_GALLERY + 1) // 16) and m['faiss']['kind'] == 'exact'      # + corrupt.png, in shards of 16
    out = folders['t']/'att'
    assert attrib('attribute', folders['queries'], '--index', index, '-k', 5, '--out', out) == 0
    df = pd.read_csv(out/'attributions.csv')
    assert list(df.columns[:5]) == ['query', 'rank', 'path', 'relpath', 'score'] and 'probability' not in df
    assert len(df) == 5 * N_SOURCES * len(VARIANTS)
    assert (df.groupby('query')['score'].apply(lambda s: bool((np.diff(s.to_numpy()) <= 1e-6).all()))).all()   # ranked
    js = json.loads((out/'attributions.json').read_text())
    assert len(js['queries']) == N_SOURCES * len(VARIANTS) and js['calibrator'] is None
    h = (out/'report.html').read_text()
    assert len(re.findall('src="data:image/jpeg;base64,', h)) == N_SOURCES * len(VARIANTS) * 6
    hits, top1 = {v: [] for v in VARIANTS}, []
    for q, gq in df.groupby('query'):
        name = Path(q).name
        hits[name.rsplit('__', 1)[1][:-4]].append(folders['source'][name] in set(gq.relpath))
        top1.append(gq.sort_values('rank').relpath.iloc[0] == folders['source'][name])
    rate = {v: float(np.mean(h)) for v, h in hits.items()}
    rate['all'] = float(np.mean([x for h in hits.values() for x in h])); rate['top1_all'] = float(np.mean(top1))
    rate['n_queries'] = len(top1)
    print(f'top-5 hit rate of the known source ({BACKBONE}@{IMG}, {N_GALLERY} gallery images): {rate}')
    (folders['t']/'hit_rate.json').write_text(json.dumps(rate))
    assert rate['all'] >= 0.75, rate
    # exact top-1 for the flipped copy scores below 1 but the identical gallery file scores 1 against itself
    r = ix.search([folders['gallery']/folders['source'][sorted(folders['source'])[0]]], k=1)
    assert r.relpath[0] == folders['source'][sorted(folders['source'])[0]] and abs(r.score[0] - 1) < 1e-4


def test_append_and_approx(folders, index, tmp_path):
    from attrib.concept.index import Index
    from attrib.sources import random_crops
    import shutil
    g = tmp_path/'gallery'; shutil.copytree(folders['gallery'], g)
    ix = tmp_path/'ix'
    assert attrib('index', g, '--backbone', BACKBONE, '--img-size', IMG, '--out', ix, '--dtype', 'float16') == 0
    new, _ = random_crops(3, 100, seed=99)
    for i, c in enumerate(new): Image.fromarray(c).save(g/f'new_{i}.png')
    (g/'part_b'/'corrupt.png').unlink()
    assert attrib('index', g, '--backbone', BACKBONE, '--img-size', IMG, '--out', ix, '--dtype', 'float16') == 0
    m = json.loads((ix/'manifest.json').read_text())
    assert m['last_build']['embedded'] == 3 and m['bad'] == {} and len(Index.open(ix)) == N_GALLERY + 3
    # an approximate index over the same images returns the exact index's results (candidates are rescored exactly)
    ia = tmp_path/'ix_approx'
    assert attrib('index', g, '--backbone', BACKBONE, '--img-size', IMG, '--out', ia, '--approx', '--dtype', 'float16') == 0
    a, e = Index.open(ia), Index.open(ix)
    assert a.manifest['faiss']['kind'] == 'ivfpq'
    qs = sorted(folders['queries'].glob('*.jpg'))[:6]
    ra, re_ = a.search(qs, k=5), e.search(qs, k=5)
    assert ra.relpath.tolist() == re_.relpath.tolist()
    assert np.allclose(ra.score, re_.score, atol=1e-5)      # the same stored vectors, scored exactly


def test_resume_after_kill(folders, tmp_path):
    "A real `attrib index` process killed mid-build keeps its committed shards; the re-run embeds only the rest."
    ix = tmp_path/'ix'
    p = attrib_proc('index', folders['gallery'], '--backbone', BACKBONE, '--img-size', IMG, '--out', ix, '--shard-size', 4,
                    '--batch-size', 1)
    t0 = time.time()
    while time.time() - t0 < 120:
        mf = ix/'manifest.json'
        try: n = len(json.loads(mf.read_text())['shards']) if mf.exists() else 0
        except json.JSONDecodeError: n = 0
        if n >= 2 or p.poll() is not None: break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.communicate()
    done = json.loads((ix/'manifest.json').read_text())
    k = sum(s['n'] for s in done['shards'])
    assert 0 < k < N_GALLERY, k
    assert attrib('index', folders['gallery'], '--backbone', BACKBONE, '--img-size', IMG, '--out', ix, '--shard-size', 4) == 0
    m = json.loads((ix/'manifest.json').read_text())
    assert m['last_build']['embedded'] == N_GALLERY - k and m['faiss']['ntotal'] == N_GALLERY


def test_bad_input_one_line(folders, index, tmp_path):
    bad = tmp_path/'broken.jpg'; bad.write_bytes(b'\xff\xd8\xff truncated')
    (tmp_path/'empty').mkdir()
    cases = [(('index', tmp_path/'nope', '--out', tmp_path/'x'), 'nope: gallery folder not found'),
             (('attribute', tmp_path/'missing.png', '--index', index), 'missing.png: query not found'),
             (('attribute', bad, '--index', index), 'broken.jpg'),
             (('attribute', bad, '--index', tmp_path), 'not an attrib index'),
             (('train-ad', tmp_path/'empty', folders['queries'], '--out', tmp_path/'ck'), 'empty: no images found'),
             (('index', folders['gallery'], '--out', tmp_path/'y', '--checkpoint', tmp_path/'none.pt'), 'none.pt: checkpoint not found')]
    for args, want in cases:
        msg = attrib(*args)
        assert isinstance(msg, str) and msg.startswith('attrib: error: ') and '\n' not in msg and want in msg, (args, msg)
    p = attrib_proc('attribute', bad, '--index', index); out, err = p.communicate(timeout=120)
    assert p.returncode == 1 and err.strip().count('\n') == 0 and err.startswith('attrib: error: ') and 'broken.jpg' in err, err


def test_calibrate(folders, index, tmp_path):
    "Fit AbC's calibrator on an AbC-format val split made from the test folders, then attribute with probabilities."
    from attrib.concept.abc_data import write_abc_split, write_distractor_list
    import shutil
    root = tmp_path/'abc'
    for d in ('gallery', 'queries'): shutil.copytree(folders[d], root/'dataset'/d)
    by_src = {}
    for q, s in folders['source'].items(): by_src.setdefault(s, []).append(f'dataset/queries/{q}')
    models = [dict(exemplar=[f'dataset/gallery/{s}'], synth={'gpt': qs}, class_id=f'm{i}', category=None)
              for i, (s, qs) in enumerate(sorted(by_src.items()))]
    write_abc_split(root, 'val', models)
    write_distractor_list(root, [f'dataset/gallery/{p.relative_to(folders["gallery"]).as_posix()}' for p in sorted(folders['gallery'].rglob('*.png'))
                                 if p.name != 'corrupt.png' and p.relative_to(folders['gallery']).as_posix() not in by_src])
    ix = tmp_path/'ix'; shutil.copytree(index, ix)
    assert attrib('calibrate', ix, '--abc', root, '--split', 'val', '--n-distractors', 20) == 0
    c = json.loads((ix/'calibrator.json').read_text())
    assert c['builtin'] is False and c['split'] == 'val' and c['inv_tau'] > 1 and 'NOT fitted on your data' not in c['note']
    out = tmp_path/'att'
    assert attrib('attribute', folders['queries'], '--index', ix, '-k', 5, '--out', out) == 0
    df = pd.read_csv(out/'attributions.csv')
    assert 'probability' in df and np.allclose(df.groupby('query').probability.sum(), 1.0)
    assert (df.groupby('query')['probability'].apply(lambda s: bool((np.diff(s.to_numpy()) <= 1e-9).all()))).all()
    assert json.loads((out/'attributions.json').read_text())['calibrator']['split'] == 'val'
    assert 'calibrator:' in (out/'report.html').read_text()


@pytest.mark.slow
def test_calibrate_builtin(index, tmp_path):
    "A calibrator fitted on the built-in mini-AbC says so (builds the tiny mini-AbC: slow)."
    import shutil
    ix = tmp_path/'ix'; shutil.copytree(index, ix)
    assert attrib('calibrate', ix, '--builtin', 'tiny', '--split', 'val') == 0
    c = json.loads((ix/'calibrator.json').read_text())
    assert c['builtin'] is True and 'NOT fitted on your data' in c['note']


def test_train_ad_then_index(folders, tmp_path, capsys):
    "A&D on two unpaired folders; resume; `index --checkpoint` takes the output folder."
    from attrib.concept.index import Index
    ck = tmp_path/'ck'
    opts = ['--backbone', 'resnet18:random', '--img-size', 32, '--batch-size', 16, '--proj-hidden', 64, '--proj-dim', 32,
            '--pred-hidden', 64, '--n-trainable', 1, '--warmup-epochs', 0]
    assert attrib('train-ad', folders['gallery']/'part_a', folders['queries'], '--out', ck, '--epochs', 1, *opts) == 0
    st = json.loads(json.dumps(__import__('torch').load(ck/'ad_embedder.pt', weights_only=True)['config']))
    assert st['epochs'] == 1 and st['backbone'] == 'resnet18' and st['weights'] is None and st['proj_dim'] == 32
    capsys.readouterr()
    assert attrib('train-ad', folders['gallery']/'part_a', folders['queries'], '--out', ck, '--epochs', 2, *opts) == 0
    assert 'resumed from' in capsys.readouterr().out
    import torch
    assert len(torch.load(ck/'checkpoints'/'last.pt', weights_only=True)['history']) == 2     # one epoch more, not two
    ix = tmp_path/'ix'
    assert attrib('index', folders['gallery'], '--checkpoint', ck, '--out', ix) == 0
    m = json.loads((ix/'manifest.json').read_text())
    assert m['embedder']['kind'] == 'ad_checkpoint' and m['embedder']['img_size'] == 32 and m['embedder']['checkpoint_sha256']
    r = Index.open(ix).search([folders['gallery']/'part_a'], k=1)
    assert np.allclose(r.score, 1, atol=1e-4)           # each gallery image is at cosine 1 from its own stored vector
    assert 'resnet18' in attrib('index', folders['gallery'], '--checkpoint', ck, '--backbone', 'mobilenetv2', '--out', tmp_path/'z')


# ---------------------------------------------------------------------------------------------------------------------------
# download-abc against a fake hub on 127.0.0.1

class FakeHub(http.server.ThreadingHTTPServer):
    "The endpoints huggingface_hub's dataset_info and hf_hub_download use, over files in memory; loopback only."
    daemon_threads = True

    def __init__(self, repo_id: str, files: dict[str, bytes], lfs: set[str]):
        self.repo_id, self.files, self.lfs, self.sha = repo_id, files, lfs, 'a' * 40
        self.corrupt, self.gets = set(), []
        super().__init__(('127.0.0.1', 0), _Handler)

    def listing(self):
        sib = []
        for n, b in sorted(self.files.items()):
            e = dict(rfilename=n, size=len(b), blobId=hashlib.sha1(f'blob {len(b)}\0'.encode() + b).hexdigest())
            if n in self.lfs: e['lfs'] = dict(sha256=hashlib.sha256(b).hexdigest(), size=len(b), pointerSize=134)
            sib.append(e)
        return dict(id=self.repo_id, sha=self.sha, private=False, siblings=sib)


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10
    def log_message(self, *a): pass

    def _file(self):
        pre = f'/datasets/{self.server.repo_id}/resolve/'
        if not self.path.startswith(pre): return None, None
        rev, _, name = self.path[len(pre):].partition('/')
        name = name.split('?')[0]
        return name, self.server.files.get(name)

    def _head(self, name, body):
        srv = self.server
        if name in srv.corrupt: body = b'X' + body[1:]
        etag = hashlib.sha256(srv.files[name]).hexdigest() if name in srv.lfs else hashlib.sha1(f'blob {len(srv.files[name])}\0'.encode() + srv.files[name]).hexdigest()
        rng = self.headers.get('Range')
        start = int(re.match(r'bytes=(\d+)-', rng).group(1)) if rng else 0
        self.send_response(206 if start else 200)
        self.send_header('ETag', f'"{etag}"'); self.send_header('X-Repo-Commit', srv.sha)
        if name in srv.lfs: self.send_header('X-Linked-Etag', f'"{etag}"'); self.send_header('X-Linked-Size', str(len(body)))
        if start: self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
        self.send_header('Content-Length', str(len(body) - start)); self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        return body[start:]

    def do_HEAD(self):
        name, body = self._file()
        if body is None: return self.send_error(404)
        self._head(name, body)

    def do_GET(self):
        p = self.path.split('?')[0]
        if p in (f'/api/datasets/{self.server.repo_id}', f'/api/datasets/{self.server.repo_id}/revision/{self.server.sha}',
                 f'/api/datasets/{self.server.repo_id}/revision/main'):
            b = json.dumps(self.server.listing()).encode()
            self.send_response(200); self.send_header('Content-Type', 'application/json'); self.send_header('Content-Length', str(len(b)))
            self.end_headers(); self.wfile.write(b); return
        name, body = self._file()
        if body is None: return self.send_error(404)
        self.server.gets.append(name)
        self.wfile.write(self._head(name, body))


def _png(seed):
    b = io.BytesIO(); Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(b, format='PNG')
    return b.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode='w:gz') as t:
        for n, data in members.items():
            ti = tarfile.TarInfo(n); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


@pytest.fixture()
def hub():
    ex = {f'exemplar/imagenet/images/n0{i}/e{i}.png': _png(i) for i in range(2)}
    sy = {f'synth/imagenet/{t}/n0{i}_0000/samples/0000{j}.png': _png(100 + 10 * i + j + 50 * (t == 'gpt'))
          for i in range(2) for t in ('gpt', 'media') for j in range(2)}
    la = {f'laion_subset/{i:06d}.png': _png(1000 + i) for i in range(5)}
    js = [dict(exemplar=[f'dataset/exemplar/imagenet/images/n0{i}/e{i}.png'],
               synth={t: [f'dataset/synth/imagenet/{t}/n0{i}_0000/samples/0000{j}.png' for j in range(2)] for t in ('media', 'gpt')},
               class_id=f'n0{i}_0000', category='bird') for i in range(2)]
    files = {'json/test_observed_imagenet.json': json.dumps(js).encode(), 'exemplar/exemplar.tar.gz': _tar(ex),
             'synth_test/synth_test.tar.gz': _tar(sy), 'laion_subset/laion_subset.tar.gz': _tar(la), 'README.md': b'fake AbC'}
    srv = FakeHub('sywang/GenDataAttribution', files, lfs={k for k in files if k.endswith('.tar.gz')})
    th = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True); th.start()
    yield srv
    srv.shutdown(); srv.server_close(); th.join(5)


def test_download_abc_fake_hub(hub, tmp_path, monkeypatch):
    ep = f'http://127.0.0.1:{hub.server_address[1]}'
    env = dict(HF_ENDPOINT=ep, HF_HUB_OFFLINE='0', HF_HOME=str(tmp_path/'hf'), HF_HUB_DISABLE_TELEMETRY='1',
               HF_HUB_ETAG_TIMEOUT='5', HF_HUB_DOWNLOAD_TIMEOUT='10', NO_PROXY='127.0.0.1')
    root = tmp_path/'abc'
    p = attrib_proc('download-abc', root, env=env); out, err = p.communicate(timeout=120)     # the command as a user runs it
    assert p.returncode == 0, err
    assert sorted(hub.gets) == sorted(k for k in hub.files if k != 'README.md')          # only the parts asked for
    assert 'validated' in out and "'distractors': 5" in out, out
    from attrib.concept.abc_data import AbCDataset
    ds = AbCDataset(root)
    assert ds.validate()['distractors'] == 5 and len(ds.load_split('test_observed_imagenet')) == 2
    assert not (root/'dataset'/'exemplar'/'exemplar.tar.gz').exists()                     # archives removed once extracted
    # the rest in this process, with the endpoint given explicitly (huggingface_hub reads HF_ENDPOINT when it is imported)
    import huggingface_hub.constants as C
    from attrib.concept.abc_release import download_abc
    from attrib.core import DataError
    monkeypatch.setattr(C, 'HF_HUB_OFFLINE', False)
    # a second run downloads nothing; a deleted file is the only one fetched again
    hub.gets.clear(); rep = download_abc(root, endpoint=ep); assert hub.gets == [] and len(rep['skipped']) == 4
    (root/'dataset'/'json'/'test_observed_imagenet.json').unlink()
    hub.gets.clear(); download_abc(root, parts=['json'], endpoint=ep); assert hub.gets == ['json/test_observed_imagenet.json']
    # a file that does not match its checksum is refused, named, and removed
    hub.corrupt.add('json/test_observed_imagenet.json'); (root/'dataset'/'json'/'test_observed_imagenet.json').unlink()
    with pytest.raises(DataError, match='test_observed_imagenet.json: checksum mismatch after two downloads'):
        download_abc(root, parts=['json'], endpoint=ep)
    assert not (root/'dataset'/'json'/'test_observed_imagenet.json').exists()


def test_official_feature_files(tmp_path):
    "AbC's feats/<model>/{laion_subset,test_*}.pth evaluated by `attrib evaluate-official`, equal to the reference loop."
    import torch
    from attrib.concept.abc_eval import reference_abc_eval
    g = torch.Generator().manual_seed(1)
    d = tmp_path/'feats'/'dino'; d.mkdir(parents=True)
    ex = torch.randn(5, 8, generator=g); chunks = [(0, 2), (2, 3), (3, 5)]
    ids = {'gpt': [0, 0, 1, 2], 'media': [2, 1, 1, 0]}
    st = {k: torch.stack([ex[chunks[i][0]] + torch.randn(8, generator=g) for i in v]) for k, v in ids.items()}
    torch.save(dict(exemplar_paths=[f'e{i}' for i in range(5)], exemplar_chunks=chunks, exemplar_tensors=ex,
                    synth_paths={k: ['s'] * 4 for k in ids}, synth_ids=ids, synth_tensors=st), d/'test_bamfg.pth')
    lai = torch.randn(50, 8, generator=g)
    torch.save(dict(feats=lai, paths=[f'dataset/laion_subset/{i}.png' for i in range(50)]), d/'laion_subset.pth')
    assert attrib('evaluate-official', tmp_path/'feats', 'dino', '--out', tmp_path/'out') == 0
    t = pd.read_csv(tmp_path/'out'/'official_dino.csv')
    ref, _ = reference_abc_eval(torch.cat([st['gpt'], st['media']]), np.array(ids['gpt'] + ids['media']), ['gpt'] * 4 + ['media'] * 4,
                                ex, np.array([0, 0, 1, 2, 2]), lai)
    assert np.allclose(t.set_index('synth_type').loc[['gpt', 'media', 'all'], 'mAP'].to_numpy(), ref['mAP'].to_numpy())
