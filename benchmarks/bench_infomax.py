"""Benchmark: one Infomax step (forward + backward) with the closed-form log-det gradient vs autograd through the Cholesky factor.

attrib.losses takes logdet(R + eps I) from attrib.linalg.logdet_pd: a Cholesky factor, and the gradient A^-1 =
cholesky_inverse(L) returned directly. The reference differentiates `2 * log(diag(cholesky(A))).sum()` with autograd, as the loss did before.
Both run in the same process on the same embeddings; the gradients w.r.t. the embeddings are asserted equal and the JSON/CSV
under runs/benchmarks/ record the time per step of each and the ratio (the machine is shared: compare the ratio, not the times).

Usage:
  python benchmarks/bench_infomax.py [--dims 128 512 1280 --batch 256 --repeats 10 --threads 2]
"""
from __future__ import annotations
import argparse, os, platform, time

import torch

from attrib import losses, linalg
from attrib.core import runs_dir, save_json
from attrib.report import save_table


def reference_logdet(R: torch.Tensor, eps: float = 0., name: str = '') -> torch.Tensor:
    "The former implementation: autograd through torch.linalg.cholesky_ex."
    A = R.to(torch.float64)
    A = 0.5 * (A + A.T) + eps * torch.eye(A.shape[0], dtype=A.dtype)
    L, info = torch.linalg.cholesky_ex(A)
    assert not int(info)
    return 2 * torch.log(torch.diagonal(L)).sum()


def one_step(z: torch.Tensor, logdet) -> tuple[float, torch.Tensor]:
    "Time a two-view InfomaxLoss step (fresh module, l = 0.01) with `logdet` swapped in; return seconds and dL/dz."
    orig = losses.logdet_pd
    losses.logdet_pd = logdet
    try:
        crit = losses.InfomaxLoss(z.shape[1], momentum=0.01)
        zz = z.clone().requires_grad_()
        t0 = time.perf_counter()
        crit(zz, zz.flip(0)).backward()
        return time.perf_counter() - t0, zz.grad
    finally:
        losses.logdet_pd = orig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--dims', type=int, nargs='+', default=[128, 512, 1280])
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--threads', type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    rows = []
    for D in a.dims:
        z = torch.randn(a.batch, D, generator=torch.Generator().manual_seed(D))
        one_step(z, linalg.logdet_pd); one_step(z, reference_logdet)                    # warm-up
        fast, ref = [], []
        for _ in range(a.repeats):                                                       # interleaved, so load changes hit both
            t, g_fast = one_step(z, linalg.logdet_pd); fast.append(t)
            t, g_ref = one_step(z, reference_logdet); ref.append(t)
        err = float((g_fast - g_ref).abs().max() / g_ref.abs().max())
        assert err < 1e-6, f'gradients differ (relative {err:.2e})'
        fast_s, ref_s = sorted(fast)[len(fast) // 2], sorted(ref)[len(ref) // 2]
        rows.append(dict(dim=D, batch=a.batch, closed_form_ms=1e3 * fast_s, autograd_cholesky_ms=1e3 * ref_s,
                         speedup=ref_s / fast_s, max_rel_grad_diff=err))
        print(f'D={D:5d}  closed-form {1e3 * fast_s:8.1f} ms   autograd-through-cholesky {1e3 * ref_s:8.1f} ms   '
              f'ratio {ref_s / fast_s:5.2f}x   max rel grad diff {err:.1e}', flush=True)
    out = runs_dir() / 'benchmarks'
    import pandas as pd
    out.mkdir(parents=True, exist_ok=True)
    save_table(pd.DataFrame(rows).set_index('dim'), 'bench_infomax', out, float_format='%.6g')
    save_json(dict(args=vars(a), rows=rows, threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
                   loadavg_before=load0, loadavg_after=os.getloadavg()), out / 'bench_infomax.json')


if __name__ == '__main__':
    main()
