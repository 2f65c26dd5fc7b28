"""The built-in zoo as one `zoo run` against the same jobs run one after another.

    python benchmarks/zoo_speed.py [--manifest zoo.toml] [--workers 2]

Needs the zoo extra (pip install -c constraints.txt -e '.[zoo]'). The
builders run first, untimed (their files are cached). Then, on LocalClusters
of --workers workers (start-up included on every side):
  zoo          `zoo run --force`: every model's job at once on one cluster,
               each model's methods sharing one calibration.
  per job      each model x method as its own `run`, one after another, each
               starting its own cluster (what a script of `dask-quant run`
               lines does): the goal's baseline.
  per model    each model as one `run_methods` (its methods sharing one
               calibration), one after another on one cluster: what the zoo
               adds beyond sharing calibration.
A second `zoo run` without --force is timed too: everything reused. One untimed
run of the first job warms this process up first.
Goal: zoo at least 1.5x faster than per job. Prints each model x method's lead
metric per side, which must be equal (results do not depend on how jobs run).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine_line  # noqa: E402


def main() -> None:
    from distributed import Client

    from dask_quant.cluster.config import ClusterConfig
    from dask_quant.cluster.connect import local_cluster
    from dask_quant.pipeline.job import run, run_methods
    from dask_quant.pipeline.target import METRICS
    from dask_quant.pipeline.zoo import ZooConfig, job_config, plan_jobs, zoo_run
    from dask_quant.pipeline.zoo_manifest import builtin_manifest, load_manifest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=HERE / ".cache" / "zoo", help="where builders keep their files")
    args = parser.parse_args()
    print(machine_line())
    manifest = load_manifest(args.manifest or builtin_manifest())
    cluster = ClusterConfig(workers=args.workers)
    quiet = lambda _: None  # noqa: E731
    jobs = plan_jobs(manifest, ZooConfig(args.manifest, args.cache, cluster), [], print)  # builds, untimed
    failed = [job.model.name for job in jobs if job.error]
    if failed:
        msg = f"builders failed for {', '.join(failed)} (pip install -c constraints.txt -e '.[zoo]')"
        raise SystemExit(msg)
    lead = {(job.model.name, m.value): job.model.lead for job in jobs for m in job.model.methods}
    with tempfile.TemporaryDirectory(prefix="zoo-speed-") as tmp:
        tmp = Path(tmp)
        # Untimed: the first job in this process pays for imports, caches and page-ins (15 s here), which
        # would go to whichever side ran first.
        run(job_config(jobs[0], tmp / "warm-up", jobs[0].model.methods[0], cluster))
        # The zoo's cache folder holds the builders' files: link it so the zoo finds them built.
        (tmp / "zoo").mkdir()
        (tmp / "zoo" / ".zoo-cache").symlink_to(args.cache.resolve() / ".zoo-cache")
        start = time.perf_counter()
        zoo = zoo_run(ZooConfig(args.manifest, tmp / "zoo", cluster, force=True), log=quiet)
        zoo_s = time.perf_counter() - start
        start = time.perf_counter()
        zoo_run(ZooConfig(args.manifest, tmp / "zoo", cluster), log=quiet)
        reused_s = time.perf_counter() - start
        values = {"zoo": {(r["model"], r["method"]): r["lead_value"] for r in zoo.rows}}

        start = time.perf_counter()
        values["per job"] = {}
        for job in jobs:
            for method in job.model.methods:
                result = run(job_config(job, tmp / "jobs", method, cluster))
                values["per job"][(job.model.name, method.value)] = METRICS[lead[job.model.name, method.value]][0](
                    result.validation
                )
        per_job_s = time.perf_counter() - start

        start = time.perf_counter()
        values["per model"] = {}
        with local_cluster(args.workers, silence_logs=logging.ERROR, dashboard_address=":0") as lc, Client(lc) as c:
            for job in jobs:
                methods = list(job.model.methods)
                quants = [job.model.quant_for(m) for m in methods]
                results = run_methods(job_config(job, tmp / "models", methods[0], cluster), quants, client=c)
                for method, result in zip(methods, results, strict=True):
                    metric = METRICS[lead[job.model.name, method.value]][0]
                    values["per model"][(job.model.name, method.value)] = metric(result.validation)
        per_model_s = time.perf_counter() - start

    print(f"zoo: {len(jobs)} models, {len(lead)} jobs (model x method), {args.workers} workers")
    for key in lead:
        shown = ", ".join(f"{side} {values[side][key]:.4f}" for side in values)
        same = len({round(values[side][key], 12) for side in values}) == 1
        print(f"  {key[0]:<8} {key[1]:<11} {lead[key]:<9} {shown}{'' if same else '  DIFFERENT'}")
    print(f"  zoo run          {zoo_s:7.1f} s")
    print(f"  per job          {per_job_s:7.1f} s  (each model x method its own run and cluster, one after another)")
    print(f"  per model        {per_model_s:7.1f} s  (run_methods per model, one after another, one cluster)")
    print(f"  zoo run again    {reused_s:7.1f} s  (everything reused: {100 * reused_s / zoo_s:.1f}% of the first)")
    print(
        f"zoo: {per_job_s / zoo_s:.2f}x faster than the same jobs one after another (goal: at least 1.5x); "
        f"{per_model_s / zoo_s:.2f}x faster than one run_methods per model; a reused night costs "
        f"{100 * reused_s / zoo_s:.1f}% of a computed one (goal: at most 5%)"
    )


if __name__ == "__main__":
    main()
