#!/usr/bin/env python3
"""Split a heaptrack peak flame-graph stack file (heaptrack_print --flamegraph-cost-type peak -F) by the
code that allocated each byte, and print each owner's bytes per connected agent.

usage: heap_table.py STACKS AGENTS

Each line of STACKS is `frame;frame;...;frame bytes`, outermost frame first; see OWNERS for how a stack
is given an owner."""
import re
import sys

# (owner, pattern on a frame). heaptrack names a frame `function (file.rs)`, without the crate, and lists
# a physical frame's inlined frames in its own order, so owners are told apart by their source files and
# checked in this order against the innermost INNER frames of each stack: the first owner with a match
# there names it (bytes a tonic decoder asked BytesMut for are tonic's, not BytesMut's).
INNER = 24
OWNERS = [
    ("HPACK (h2 hpack decoder/encoder)", r"\((decoder|encoder|table|huffman)\.rs\)"),
    ("tonic decode buffer", r"\(decode\.rs\)"),
    ("tonic encode buffer", r"\(encode\.rs\)"),
    ("h2 write buffer (FramedWrite, 16 KiB)", r"\(framed_write\.rs\)"),
    ("h2 read buffer (tokio-util, 8 KiB)", r"\((framed_impl|framed_read|length_delimited)\.rs\)"),
    ("h2 streams (slab, queues, windows)", r"\((streams|recv|send|prioritize|store|buffer|flow_control|counts)\.rs\)"),
    ("tasks (spawned futures)", r"new_task|box_new_uninit"),
    ("node state (state/)", r"\((fold|report|book|series|node|index|breakdown|capacity|validate|commits|window)\.rs\)"),
    ("stream: queue, mailbox, assembler (ingest.rs)", r"\((ingest|parts)\.rs\)"),
    ("channels (tokio sync)", r"\((bounded|chan|list|block|semaphore|batch_semaphore|watch)\.rs\)"),
]
COMPILED = [(name, re.compile(p)) for name, p in OWNERS]


def owner(frames):
    inner = [f for f in frames if f][-INNER:]
    for name, rx in COMPILED:
        if any(rx.search(f) for f in inner):
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
