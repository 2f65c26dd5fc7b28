"""What the LocalCluster's TLS costs: 5,000 one-row chunks through pass 1, locked against plain.

    python benchmarks/tls_overhead.py [--chunks 5000] [--repeats 3]

The LocalCluster a run starts uses TLS with a throw-away certificate, so only
this process can connect (cluster.connect.local_cluster). Every chunk task is a
scheduler round trip, so one-row chunks show the most TLS can cost: two
2-worker LocalClusters, one locked and one plain, run the same pass 1,
alternated, medians; the ratio is printed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402
from overhead_scaling import cluster_pass, prepared_for, tiled_calib  # noqa: E402


def main() -> None:
    from distributed import Client

    from dask_quant.cluster.connect import local_cluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_for(tiled_calib(Path(tmp), "small.npy", args.chunks))
        clusters = {
            locked: local_cluster(2, locked=locked, dashboard_address=":0", silence_logs=logging.ERROR)
            for locked in (True, False)
        }
        clients = {locked: Client(cluster) for locked, cluster in clusters.items()}
        try:
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(args.repeats):
                for locked, client in clients.items():
                    times[locked].append(cluster_pass(client, prepared, 1))
            tls, plain = statistics.median(times[True]), statistics.median(times[False])
            print(
                f"tls:      {args.chunks} one-row chunks on 2 workers: TLS {tls:.2f} s, plain TCP {plain:.2f} s "
                f"-> {tls / plain:.2f}x, {1e3 * (tls - plain) / args.chunks:+.2f} ms per chunk "
                f"(goal: the lock costs under 1 ms per chunk)"
            )
        finally:
            for locked in clients:
                clients[locked].close()
                clusters[locked].close()


if __name__ == "__main__":
    main()
