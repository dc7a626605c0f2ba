"""Benchmark: backbones run channels-last (NHWC) vs the NCHW reference, on the main job's shapes.

`attrib.backbones.Backbone.forward` and `attrib.concept.ssl_model.BackbonePart.forward` hand image-shaped inputs to the network
channels-last for the families in `attrib.backbones.CHANNELS_LAST_FAMILIES`: this benchmark is what decides that list. Both
formats are forced here for every backbone given, on the same batch and the same weights. Timed, interleaved in one
process: (1) the frozen trunk's forward (what the trunk cache and the augmentation bank run, 29k + 23k images per main job),
(2) the trainable tail's forward + backward on trunk outputs (every A&D step), (3) the whole backbone's forward (raw features
of `attrib extract` / the benchmark card). The outputs of both formats are compared (max |difference|: float rounding only).
JSON/CSV go to runs/benchmarks/; compare the ratios, not the times (the machine is shared).

Usage:
  python benchmarks/bench_memory_format.py [--backbones mobilenetv2 resnet18:random --img-size 64 --batch 256 --repeats 5]
"""
from __future__ import annotations
import argparse, os, platform, time

import torch

from attrib.backbones import create_backbone, parse_backbone
from attrib.concept.ssl_model import split_backbone
from attrib.core import runs_dir, save_json
from attrib.report import save_table


def run_as(part, channels_last: bool):
    "Run `part`'s modules on the input in the given memory format (bypassing `BackbonePart.forward`'s own choice)."
    def run(x):
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for mod in part: x = mod(x)
        return x
    return run


def seconds(fn, x, grad: bool = False) -> tuple[float, torch.Tensor]:
    "Wall seconds of one call of `fn(x)` (forward, or forward + backward of the sum when `grad`) and its output."
    t0 = time.perf_counter()
    if grad:
        y = fn(x); y.float().square().sum().backward()
    else:
        with torch.inference_mode(): y = fn(x)
    return time.perf_counter() - t0, y.detach()


def compare(name: str, fast, ref, x, repeats: int, grad: bool = False) -> dict:
    "Interleaved timings of `fast` and `ref` on `x`; the median of each, their ratio and the outputs' max |difference|."
    seconds(fast, x, grad); seconds(ref, x, grad)                                  # warm-up
    tf, tr = [], []
    for _ in range(repeats):
        t, yf = seconds(fast, x, grad); tf.append(t)
        t, yr = seconds(ref, x, grad); tr.append(t)
    med = lambda v: sorted(v)[len(v) // 2]
    return dict(what=name, channels_last_s=round(med(tf), 4), nchw_s=round(med(tr), 4),
                speedup=round(med(tr) / med(tf), 2), max_abs_diff=float((yf - yr).abs().max()),
                max_abs_ref=float(yr.abs().max()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--backbones', nargs='+', default=['mobilenetv2', 'resnet18:random'])
    ap.add_argument('--img-size', type=int, default=64)
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--n-trainable', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--threads', type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    load0, rows = os.getloadavg(), []
    for spec in a.backbones:
        name, weights = parse_backbone(spec)
        torch.manual_seed(0)
        bb = create_backbone(name, weights=weights, img_size=a.img_size).eval()
        trunk, tail = split_backbone(bb, a.n_trainable)
        x = torch.rand(a.batch, 3, a.img_size, a.img_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(): h = trunk(x).contiguous()   # NCHW, as the trunk cache stores it
        tail.train()
        for p in tail.parameters(): p.requires_grad_(True)
        for r in (compare('trunk forward', run_as(trunk, True), run_as(trunk, False), x, a.repeats),
                  compare('tail forward + backward', run_as(tail, True), run_as(tail, False), h, a.repeats, grad=True),
                  compare('backbone forward', run_as([bb.model], True), run_as([bb.model], False), x, a.repeats)):
            rows.append(dict(backbone=spec, img_size=a.img_size, batch=a.batch, **r))
            print(rows[-1], flush=True)
    out = runs_dir()/'benchmarks'
    env = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
               loadavg_before=load0, loadavg_after=os.getloadavg())
    save_json(dict(args=vars(a), env=env, rows=rows), out/'bench_memory_format.json')
    import pandas as pd
    save_table(pd.DataFrame(rows).set_index(['backbone', 'what']), 'bench_memory_format', out)
    print(f'wrote {out}/bench_memory_format.json and .csv')


if __name__ == '__main__':
    main()
