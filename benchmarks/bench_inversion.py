"""Batched RONAN inversion vs the reference per-image loop (one image at a time, as the RONAN code runs).

Both runs use the same zoo generator, the same images, the same initial latents (same seed), the same steps, restarts and lr,
and no early stopping, so their final best losses must agree (Adam is elementwise; the generator is per-sample in eval mode).
A third run adds the batched inversion's per-image early stopping (the practical setting), whose scores are compared with the
fixed-step loop as well.

    python benchmarks/bench_inversion.py                      # tiny + default zoo (default only if cached in data/zoo)
    python benchmarks/bench_inversion.py --sizes default --n 64 --steps 100 --restarts 4 --threads 2

Writes runs/benchmarks/bench_inversion.json and .csv (timings are noisy on a shared machine: the lead re-measures).
"""
from __future__ import annotations
import argparse, json, os, platform, sys, time

import numpy as np
import pandas as pd
import torch


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench_model(name, size, n, steps, restarts, lr, seed, channels_last):
    from attrib.zoo import load_zoo_model, zoo_real_images
    from attrib.images import images_to_tensor, quantize8
    from attrib.origin.inversion import invert, invert_loop
    g = load_zoo_model(name, size, train_if_missing=(size == 'tiny'))
    if channels_last: g = g.to(memory_format=torch.channels_last)
    own = quantize8(g.sample(n - n // 2, seed=123))
    real = images_to_tensor(zoo_real_images('test', n // 2, size=size))
    x = torch.cat([own, real])
    kw = dict(steps=steps, restarts=restarts, lr=lr, seed=seed)
    invert(g, x[:2], **{**kw, 'steps': 2})                                      # warm-up (oneDNN primitives)
    rb, tb, cb = timed(lambda: invert(g, x, early_stop=False, **kw))
    rl, tl, cl = timed(lambda: invert_loop(g, x, early_stop=False, **kw))
    re, te, ce = timed(lambda: invert(g, x, early_stop=True, **kw))
    d = (rb.score - rl.score).abs()
    rel = d / rl.score.clamp_min(1e-12)
    de = (re.score - rl.score) / rl.score.clamp_min(1e-12)
    return dict(model=name, size=size, img_size=g.img_size, n_images=n, steps=steps, restarts=restarts, lr=lr, channels_last=channels_last,
                loop_wall_s=tl, loop_cpu_s=cl, batched_wall_s=tb, batched_cpu_s=cb, early_stop_wall_s=te, early_stop_cpu_s=ce,
                loop_img_per_s=n / tl, batched_img_per_s=n / tb, early_stop_img_per_s=n / te,
                speedup_wall=tl / tb, speedup_cpu=cl / cb, speedup_early_stop_wall=tl / te,
                max_abs_diff=float(d.max()), max_rel_diff=float(rel.max()), steps_equal=bool((rb.n_steps == rl.n_steps).all()),
                mean_updates_early_stop=float(re.n_steps.float().mean()),
                early_stop_median_rel_score_change=float(de.median()), early_stop_max_rel_score_increase=float(de.max()),
                score_own_median=float(rl.score[:len(own)].median()), score_real_median=float(rl.score[len(own):].median()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', nargs='+', default=['tiny', 'default'])
    p.add_argument('--models', nargs='+', default=None)
    p.add_argument('--n', type=int, default=64, help='images (half own samples, half held-out real)')
    p.add_argument('--steps', type=int, default=100)
    p.add_argument('--restarts', type=int, default=4)
    p.add_argument('--lr', type=float, default=0.05)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    p.add_argument('--channels-last', action='store_true', help='run both on a channels_last copy of the model')
    p.add_argument('--out', default=None, help='output folder (default runs/benchmarks)')
    a = p.parse_args(argv)
    os.environ.setdefault('ATTRIB_PROGRESS', '0')
    if a.threads: torch.set_num_threads(a.threads)
    from attrib.core import runs_dir, save_json
    from attrib.zoo import ZOO_NAMES, zoo_path
    out = runs_dir()/'benchmarks' if a.out is None else __import__('pathlib').Path(a.out)
    rows = []
    for size in a.sizes:
        for name in (a.models or ZOO_NAMES):
            if size != 'tiny' and not zoo_path(name, size).exists():
                print(f'skip {name} ({size}): not cached; train it with attrib.zoo.train_zoo(size={size!r})', file=sys.stderr); continue
            r = bench_model(name, size, a.n, a.steps, a.restarts, a.lr, a.seed, a.channels_last)
            rows.append(r)
            print(f"{size:7s} {name:7s} loop {r['loop_img_per_s']:7.2f} img/s  batched {r['batched_img_per_s']:7.2f} img/s  "
                  f"x{r['speedup_wall']:.1f} (cpu x{r['speedup_cpu']:.1f})  +early stop x{r['speedup_early_stop_wall']:.1f}  "
                  f"max|diff| {r['max_abs_diff']:.1e} (rel {r['max_rel_diff']:.1e})", flush=True)
    df = pd.DataFrame(rows)
    env = dict(python=sys.version.split()[0], torch=torch.__version__, threads=torch.get_num_threads(), platform=platform.platform(),
               cpus=os.cpu_count(), load_avg=os.getloadavg(), time=time.strftime('%Y-%m-%d %H:%M:%S'))
    out.mkdir(parents=True, exist_ok=True)
    save_json({'args': vars(a), 'env': env, 'results': rows,
               'summary': {s: {'speedup_wall_median': float(d.speedup_wall.median()), 'speedup_cpu_median': float(d.speedup_cpu.median()),
                               'speedup_early_stop_wall_median': float(d.speedup_early_stop_wall.median()),
                               'max_abs_diff': float(d.max_abs_diff.max())} for s, d in df.groupby('size')} if len(df) else {}},
              out/'bench_inversion.json')
    df.to_csv(out/'bench_inversion.csv', index=False)
    print(f'wrote {out}/bench_inversion.json and .csv')
    return df


if __name__ == '__main__':
    main()
