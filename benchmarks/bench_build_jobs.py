"""Benchmark: the mini-AbC build on `BUILD_JOBS` worker processes vs one process (the reference), same size and seed.

`attrib.concept.mini_abc.build_mini_abc(jobs=...)` renders the distractors on `jobs - 1` worker processes while the
`generator` stage trains the generator in the main process (one thread: its weights would change with the thread count),
and spreads the sampling of the `synth` stage over `jobs` workers (`attrib.train.worker_pool`, one torch thread each).
Both builds run here one after the other into fresh folders; reported: each stage's wall and CPU seconds, the speed-up
per stage and overall, and whether the two content hashes are equal (they must be). JSON/CSV go to runs/benchmarks/;
compare the ratios, not the times (the machine is shared).

Usage:
  python benchmarks/bench_build_jobs.py [--size small --seed 0 --jobs 2]
"""
from __future__ import annotations
import argparse, os, platform, shutil, tempfile
from pathlib import Path

import torch

from attrib.concept.mini_abc import BUILD_JOBS, build_mini_abc
from attrib.core import load_json, runs_dir, save_json
from attrib.report import save_table


def timed_build(root: Path, size: str, seed: int, jobs: int) -> dict:
    "Build into the fresh folder `root`; the manifest's stage timings and content hash."
    build_mini_abc(root, size=size, seed=seed, jobs=jobs)
    m = load_json(root/'manifest.json')
    return dict(stages=m['stages'], wall_s=m['build_wall_s'], cpu_s=m['build_cpu_s'], content_hash=m['content_hash'])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--size', default='small')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--jobs', type=int, default=BUILD_JOBS)
    a = ap.parse_args(argv)
    load0, tmp = os.getloadavg(), Path(tempfile.mkdtemp(prefix='bench_build_'))
    try:
        ref = timed_build(tmp/'one', a.size, a.seed, 1)
        par = timed_build(tmp/'jobs', a.size, a.seed, a.jobs)
    finally:
        shutil.rmtree(tmp)  # only the two builds this run made
    rows = [dict(stage=s, one_wall_s=ref['stages'][s]['wall_s'], jobs_wall_s=par['stages'][s]['wall_s'],
                 jobs_cpu_s=par['stages'][s]['cpu_s'],
                 speedup=round(ref['stages'][s]['wall_s'] / max(par['stages'][s]['wall_s'], 1e-9), 2))
            for s in ref['stages']]
    rows.append(dict(stage='build', one_wall_s=ref['wall_s'], jobs_wall_s=par['wall_s'], jobs_cpu_s=par['cpu_s'],
                     speedup=round(ref['wall_s'] / par['wall_s'], 2)))
    for r in rows: print(r, flush=True)
    same = ref['content_hash'] == par['content_hash']
    print('content hashes equal:', same)
    out = runs_dir()/'benchmarks'
    env = dict(torch=torch.__version__, cpu=platform.processor() or platform.machine(), cpus=os.cpu_count(),
               loadavg_before=load0, loadavg_after=os.getloadavg())
    save_json(dict(args=vars(a), env=env, rows=rows, same_bytes=same, content_hash=ref['content_hash']),
              out/'bench_build_jobs.json')
    import pandas as pd
    save_table(pd.DataFrame(rows).set_index('stage'), 'bench_build_jobs', out)
    print(f'wrote {out}/bench_build_jobs.json and .csv')
    if not same: raise SystemExit('the builds differ: the worker processes changed the bytes')


if __name__ == '__main__':
    main()
