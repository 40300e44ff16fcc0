#!/usr/bin/env python3
"""Prints an EKS cluster's IP capacity as the cni-metrics aggregator sees it, from its gRPC Consumer API.

A client we did not write in Rust: it subscribes to the aggregator (`Consumer.Subscribe`, cluster numbers
only) and prints one line per update, or one JSON object per update with --json. Generate the stubs first:

    pip install -r examples/python/requirements.txt
    bash examples/python/generate.sh            # writes examples/python/gen/
    python3 examples/python/capacity.py --aggregator 127.0.0.1:61690 --once

With mutual TLS on the aggregator, pass --tls-cert, --tls-key and --tls-ca.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.environ.get("CNI_METRICS_STUBS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "gen")))

import grpc  # noqa: E402
from cni_metrics.v1 import consumer_pb2, consumer_pb2_grpc  # noqa: E402


def channel(args):
    if not args.tls_ca:
        return grpc.insecure_channel(args.aggregator)
    with open(args.tls_ca, "rb") as ca, open(args.tls_cert, "rb") as cert, open(args.tls_key, "rb") as key:
        creds = grpc.ssl_channel_credentials(root_certificates=ca.read(), private_key=key.read(), certificate_chain=cert.read())
    return grpc.secure_channel(args.aggregator, creds)


def as_dict(c):
    """The stable capacity fields of a ClusterView."""
    return {
        "cluster_id": c.cluster_id,
        "nodes_known": c.nodes_known,
        "nodes_reporting": c.nodes_reporting,
        "nodes_low_on_ips": c.nodes_low_on_ips,
        "assigned_ips": c.assigned_ips,
        "total_ips": c.total_ips,
        "max_ips": c.max_ips,
        "available_ips": c.available_ips,
        "ip_headroom": c.ip_headroom,
        "utilization_max": c.utilization_max,
        "enis_allocated": c.enis_allocated,
        "enis_max": c.enis_max,
    }


def line(c):
    used = "n/a" if c.utilization_max < 0 else f"{c.utilization_max * 100:.1f} % of the maximum"
    return (
        f"cluster {c.cluster_id or '(no id)'}: {c.nodes_reporting} of {c.nodes_known} nodes reporting; "
        f"{c.assigned_ips:.0f} IPs assigned of {c.total_ips:.0f} allocated ({c.available_ips:.0f} free), "
        f"{used}; {c.ip_headroom:.0f} more IPs possible; {c.nodes_low_on_ips} nodes low on IPs; "
        f"ENIs {c.enis_allocated:.0f} of {c.enis_max:.0f}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--aggregator", default="127.0.0.1:61690", help="host:port of the aggregator's gRPC port")
    p.add_argument("--once", action="store_true", help="print the first update and exit")
    p.add_argument("--json", action="store_true", help="one JSON object per update")
    p.add_argument("--interval-ms", type=int, default=1000, help="at most one update this often")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-ca")
    args = p.parse_args()
    stub = consumer_pb2_grpc.ConsumerStub(channel(args))
    request = consumer_pb2.SubscribeRequest(cluster_only=True, min_interval_ms=args.interval_ms)
    try:
        for update in stub.Subscribe(request):
            c = update.cluster
            print(json.dumps(as_dict(c), sort_keys=True) if args.json else line(c), flush=True)
            if args.once:
                return 0
    except grpc.RpcError as e:
        print(f"cannot read the aggregator at {args.aggregator}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
