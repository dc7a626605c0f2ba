"""Benchmark: AbC evaluation by counting (attrib.concept.abc_eval.abc_ranks) vs the per-query full-argsort reference (AbC's eval.py loop).

Two modes (results as JSON + CSV under runs/benchmarks/):

  compare  random l2-normalised features (default 100k distractors x 2k queries, D=512): the batched evaluation and the
           reference in one run, ranks asserted identical; wall time of each and the speed ratio. With --ref-queries M < Q the
           reference runs on the first M queries only and its time is extrapolated linearly to Q (its cost per query does not
           depend on the other queries); the JSON says so. Also times, on a few queries, AbC's own float32 loop
           (torch.cat + matmul + torch.argsort per query, as in their eval.py) for context.

  scale    (default) 1M distractors x 25k queries, D=512, float32: the distractors are generated chunk by chunk from a seed and
           streamed into abc_ranks (never all in memory), so peak memory stays far below the machine's 24 GB. Reports wall time
           and peak RSS, and checks the ranks of --verify-queries queries against an independent float64 count over the same stream.

Synthetic data: exemplars ~ N(0, I); query = strength * its model's first exemplar direction + N(0, I) noise, strength ~ U(0, 0.25) per
query, so positives land anywhere from rank 1 to the middle of the gallery (the worst case for the exact-rescoring window); 80% of
models have 1 exemplar (object-centric), 20% have 2-8 (style-centric); 40 queries per model, synth types 'gpt' / 'media' alternating.

Usage:
  python benchmarks/bench_abc_eval.py --mode compare [--n-dist 100000 --n-query 2000 --dim 512 --ref-queries 2000]
  python benchmarks/bench_abc_eval.py --mode scale   [--n-dist 1000000 --n-query 25000 --dim 512]
  add --threads N to pin torch and numpy-BLAS threads for both implementations.
Timings on a shared machine are noisy: the JSON records the load average before and after, and the thread settings.
"""
from __future__ import annotations
import argparse, json, os, platform, resource, sys, time
from pathlib import Path

import numpy as np
import torch

from attrib.concept.abc_eval import abc_ranks, reference_abc_eval, prepare_features, score_key
from attrib.core import runs_dir, save_json


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # KB on Linux


def make_models(n_query: int, per_model: int, rng) -> tuple[np.ndarray, np.ndarray]:
    n_models = max(1, n_query // per_model)
    P = np.where(rng.random(n_models) < 0.8, 1, rng.integers(2, 9, n_models))
    ex_model = np.repeat(np.arange(n_models), P)
    q_model = np.repeat(np.arange(n_models), per_model)[:n_query]
    if len(q_model) < n_query: q_model = np.concatenate([q_model, rng.integers(0, n_models, n_query - len(q_model))])
    return q_model, ex_model


def make_queries_exemplars(n_query, dim, per_model, seed):
    rng = np.random.default_rng(seed)
    qm, em = make_models(n_query, per_model, rng)
    E = rng.standard_normal((len(em), dim), dtype=np.float32)
    first = {m: i for i, m in reversed(list(enumerate(em.tolist())))}
    Eu = E / np.linalg.norm(E, axis=1, keepdims=True)
    strength = rng.uniform(0, 0.25, (n_query, 1)).astype(np.float32) * np.sqrt(dim)
    Qf = rng.standard_normal((n_query, dim), dtype=np.float32) + strength * Eu[[first[m] for m in qm.tolist()]]
    qt = np.where(np.arange(n_query) % 2 == 0, 'gpt', 'media')
    return Qf, qm, qt, E, em


def distractor_chunk(i: int, chunk: int, n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + i)
    return torch.randn(min(chunk, n - i * chunk), dim, generator=g)


def env_info():
    try:
        from threadpoolctl import threadpool_info
        blas = [(i['internal_api'], i['num_threads']) for i in threadpool_info()]
    except ImportError: blas = None
    return dict(python=sys.version.split()[0], torch=torch.__version__, threads=torch.get_num_threads(), blas_threads=blas, cpus=os.cpu_count(),
                platform=platform.platform(), loadavg=os.getloadavg())


def run_compare(a) -> dict:
    Qf, qm, qt, E, em = make_queries_exemplars(a.n_query, a.dim, a.per_model, a.seed)
    Dst = torch.cat([distractor_chunk(i, a.chunk, a.n_dist, a.dim, a.seed) for i in range(-(-a.n_dist // a.chunk))]).numpy()
    load0 = os.getloadavg()
    stats = {}
    t0 = time.perf_counter()
    fast = abc_ranks(Qf, qm, E, em, Dst, chunk=a.chunk, stats=stats)
    t_fast = time.perf_counter() - t0
    m = min(a.ref_queries, a.n_query)
    t0 = time.perf_counter()
    _, ref_pq = reference_abc_eval(Qf[:m], qm[:m], qt[:m], E, em, Dst)
    t_ref_m = time.perf_counter() - t0
    same = all(r == f.tolist() for r, f in zip(ref_pq['ranks'], fast[:m]))
    assert same, 'batched ranks differ from the reference'
    t_ref = t_ref_m * a.n_query / m
    # AbC's own loop (float32, unstable torch.argsort), a few queries, for context only
    n_abc = min(a.abc_queries, a.n_query)
    d32, e32, q32 = (prepare_features(x) for x in (Dst, E, Qf[:n_abc]))
    t0 = time.perf_counter()
    for i in range(n_abc):
        all_feat = torch.cat([d32, e32[torch.as_tensor(np.where(em == qm[i])[0])]])
        torch.argsort(-(all_feat @ q32[i]))
    t_abc = (time.perf_counter() - t0) / n_abc
    return dict(mode='compare', n_dist=a.n_dist, n_query=a.n_query, dim=a.dim, n_exemplars=len(em), chunk=a.chunk,
                fast_s=t_fast, reference_s=t_ref, reference_measured_queries=m, reference_measured_s=t_ref_m,
                reference_extrapolated=m < a.n_query, speed_ratio=t_ref / t_fast, ranks_identical=same,
                abc_float32_loop_s_per_query=t_abc, abc_float32_loop_extrapolated_s=t_abc * a.n_query,
                ratio_vs_abc_float32_loop=t_abc * a.n_query / t_fast, n_uncertain=stats['n_uncertain'],
                uncertain_fraction=stats['n_uncertain'] / (a.n_query * a.n_dist), window=stats['window'],
                peak_rss_gb=peak_rss_gb(), loadavg_before=load0, loadavg_after=os.getloadavg())


def run_scale(a) -> dict:
    Qf, qm, qt, E, em = make_queries_exemplars(a.n_query, a.dim, a.per_model, a.seed)
    n_chunks = -(-a.n_dist // a.chunk)
    stream = lambda: (distractor_chunk(i, a.chunk, a.n_dist, a.dim, a.seed) for i in range(n_chunks))
    load0, rss0 = os.getloadavg(), peak_rss_gb()
    stats = {}
    t0 = time.perf_counter()
    ranks = abc_ranks(Qf, qm, E, em, stream, chunk=a.chunk, stats=stats, show_progress=True)
    t = time.perf_counter() - t0
    # independent check for a few queries: exact float64 keys over the same stream, counted directly
    v = np.linspace(0, a.n_query - 1, a.verify_queries).astype(int)
    q64 = prepare_features(Qf[v]).double(); e = prepare_features(E)
    kp = [score_key(e[torch.as_tensor(np.where(em == qm[i])[0])].double() @ q64[j]) for j, i in enumerate(v)]
    cnt = [torch.zeros(len(k), dtype=torch.long) for k in kp]
    for c in stream():
        kd = score_key(prepare_features(c).double() @ q64.T)          # n x len(v)
        for j in range(len(v)): cnt[j] += (kd[:, j, None] >= kp[j][None]).sum(0)
    ok = True
    for j, i in enumerate(v):
        k = kp[j]; P = len(k)
        B = torch.tensor([sum(int(k[l] > k[x] or (k[l] == k[x] and l < x)) for l in range(P) if l != x) for x in range(P)])
        ok &= sorted((1 + cnt[j] + B).tolist()) == ranks[i].tolist()
    assert ok, 'scale run: ranks differ from the direct float64 count'
    ap = np.mean([np.sum(np.arange(1, len(r) + 1) / r) / len(r) for r in ranks])
    return dict(mode='scale', n_dist=a.n_dist, n_query=a.n_query, dim=a.dim, n_exemplars=len(em), chunk=a.chunk,
                wall_s=t, peak_rss_gb=peak_rss_gb(), peak_rss_before_gb=rss0, n_uncertain=stats['n_uncertain'],
                uncertain_fraction=stats['n_uncertain'] / (a.n_query * a.n_dist), verified_queries=len(v), verified=ok,
                mAP=float(ap), loadavg_before=load0, loadavg_after=os.getloadavg())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--mode', choices=['compare', 'scale'], default='compare')
    p.add_argument('--n-dist', type=int); p.add_argument('--n-query', type=int)
    p.add_argument('--dim', type=int, default=512); p.add_argument('--per-model', type=int, default=40)
    p.add_argument('--chunk', type=int, default=65536); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--ref-queries', type=int, default=10**9, help='compare: run the reference on this many queries (extrapolate)')
    p.add_argument('--abc-queries', type=int, default=20, help="compare: queries for timing AbC's own float32 loop")
    p.add_argument('--verify-queries', type=int, default=20, help='scale: queries checked against a direct float64 count')
    p.add_argument('--threads', type=int, default=None, help='torch and BLAS threads for both implementations (default: unchanged)')
    p.add_argument('--out', default=None, help='output folder (default runs/benchmarks)')
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
        from threadpoolctl import threadpool_limits
        threadpool_limits(a.threads)       # numpy's BLAS (the reference's matrix-vector products)
    a.n_dist = a.n_dist or (100_000 if a.mode == 'compare' else 1_000_000)
    a.n_query = a.n_query or (2_000 if a.mode == 'compare' else 25_000)
    res = run_compare(a) if a.mode == 'compare' else run_scale(a)
    res['env'] = env_info(); res['command'] = ' '.join(['python', 'benchmarks/bench_abc_eval.py'] + (argv or sys.argv[1:]))
    out = Path(a.out) if a.out else runs_dir()/'benchmarks'
    stem = f"abc_eval_{a.mode}_{a.n_dist}x{a.n_query}_d{a.dim}" + (f'_t{a.threads}' if a.threads else '')
    save_json(res, out/f'{stem}.json')
    import pandas as pd
    flat = {k: (str(v) if isinstance(v, (tuple, list, dict)) else v) for k, v in res.items()}
    pd.DataFrame([flat]).to_csv(out/f'{stem}.csv', index=False)
    print(json.dumps(res, indent=2, default=str))
    return res


if __name__ == '__main__':
    main()
