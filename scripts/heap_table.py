#!/usr/bin/env python3
"""Split a heaptrack peak flame-graph stack file (heaptrack_print --flamegraph-cost-type peak -F) by the
code that allocated each byte, and print each owner's bytes per connected agent.

usage: heap_table.py STACKS AGENTS

Each line of STACKS is `frame;frame;...;frame bytes`, outermost frame first. The innermost frame that
matches an owner below names the owner (so bytes a tonic decoder asked BytesMut for are tonic's)."""
import re
import sys

# (owner, pattern on a frame), the first owner whose pattern matches the innermost frame wins.
OWNERS = [
    ("h2 write buffer (FramedWrite)", r"h2::codec::framed_write"),
    ("h2 read buffer (tokio-util FramedRead)", r"tokio_util::codec::(framed_read|framed_impl|length_delimited)|h2::codec::framed_read"),
    ("HPACK (decoder buffer, tables)", r"h2::hpack"),
    ("h2 streams (slab, queues, windows)", r"h2::proto::streams"),
    ("h2 connection, other", r"h2::"),
    ("hyper (connection, service)", r"hyper::|hyper_util::"),
    ("tonic decode buffer", r"tonic::codec::decode"),
    ("tonic encode buffer", r"tonic::codec::encode"),
    ("tonic, other", r"tonic::|tonic_prost::"),
    ("node state (ClusterState)", r"cni_metrics_aggregator::state::"),
    ("stream: assembler, mailbox (ingest)", r"cni_metrics_aggregator::ingest"),
    ("tasks (futures of spawned tasks)", r"tokio::runtime::task::|tokio::task::spawn"),
    ("channels (tokio mpsc/watch)", r"tokio::sync::"),
    ("sockets and timers (tokio I/O driver)", r"tokio::runtime::(io|time)|tokio::net::"),
]
COMPILED = [(name, re.compile(p)) for name, p in OWNERS]


def owner(frames):
    for f in reversed(frames):
        for name, rx in COMPILED:
            if rx.search(f):
                return name
    return "other (start-up, runtime, SDKs)"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    agents = int(sys.argv[2])
    if agents <= 0:
        sys.exit("no agent was connected: nothing to divide by")
    totals = {}
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        for line in f:
            stack, _, cost = line.rstrip("\n").rpartition(" ")
            if not stack or not cost.isdigit():
                continue
            name = owner(stack.split(";"))
            totals[name] = totals.get(name, 0) + int(cost)
    total = sum(totals.values())
    print(f"heap at its peak: {total / 2**20:.1f} MiB with {agents} agents connected")
    print(f"{'owner':<42} {'MiB':>8} {'bytes/agent':>12}")
    for name, b in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{name:<42} {b / 2**20:>8.2f} {b / agents:>12.0f}")
    print(f"{'total':<42} {total / 2**20:>8.2f} {total / agents:>12.0f}")


if __name__ == "__main__":
    main()
