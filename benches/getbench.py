"""Python gets against Rust gets on the same store, single thread, 100 KB values; and
Python gets on 1 and 4 threads (the GIL is released during each call into the library).

    python benches/getbench.py --dir /tmp/kvs-pybench --records 20000

Writes the store with the Python package, then, in alternating runs, reads it cold (the
store just opened: the ring is empty and reads go to the device with O_DIRECT) and from
the ring (values just put), with Python and with getbench.rs beside it, through the Rust
API, the same keys in the same order. Prints gets per second and the ratio. Needs the
package installed (pip install ./python) and cargo. Removes the store at the end.
"""

import argparse
import os
import shutil
import subprocess
import threading
import time

import kvs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shuffled(n, seed):
    """The read order, as getbench.rs makes it."""
    v = list(range(n))
    x = seed | 1
    mask = (1 << 64) - 1
    for i in range(n - 1, 0, -1):
        x ^= (x << 13) & mask
        x ^= x >> 7
        x ^= (x << 17) & mask
        j = x % (i + 1)
        v[i], v[j] = v[j], v[i]
    return v


def timed(store, keys):
    lat = []
    t0 = time.perf_counter()
    for k in keys:
        t = time.perf_counter()
        v = store.get(k)
        lat.append(time.perf_counter() - t)
        assert v is not None
    secs = time.perf_counter() - t0
    lat.sort()
    return len(keys) / secs, lat[len(lat) // 2] * 1e6, lat[int(len(lat) * 0.99)] * 1e6


def rust(args, *rest):
    out = subprocess.run(
        ["cargo", "bench", "-q", "--bench", "getbench", "--", args.dir, *map(str, rest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    f = dict(p.split("=") for p in out)
    return int(f["gets"]) / float(f["seconds"]), float(f["p50_us"]), float(f["p99_us"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/kvs-pybench")
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--size", type=int, default=100 << 10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    with kvs.open(args.dir, expected_records=args.records * 2) as s:
        for i in range(args.records):
            s[f"key-{i}"] = os.urandom(args.size)
    subprocess.run(["cargo", "bench", "--bench", "getbench", "--no-run"], cwd=ROOT, check=True)
    ring = 1500  # 1500 x 100 KiB stays in the default 256 MiB ring
    rows = []
    # Each round, each language reads keys nobody read before in this run (a host's cache
    # below the VM must not favour the second reader), and who reads first alternates.
    order_all = shuffled(args.records, 1000)
    m = args.records // (2 * args.rounds + 2)
    for r in range(args.rounds):
        a, b = 2 * r * m, (2 * r + 1) * m
        spans = [(a, a + m), (b, b + m)]
        if r % 2:
            spans.reverse()
        (pa, pb), (ra, rb) = spans
        order = [f"key-{i}".encode() for i in order_all[pa:pb]]

        def py_cold():
            with kvs.open(args.dir) as s:
                return timed(s, order)

        def rs_cold():
            return rust(args, "cold", args.records, 1000, ra, rb)

        if r % 2:
            rs_c = rs_cold()
            py_c = py_cold()
        else:
            py_c = py_cold()
            rs_c = rs_cold()
        py_cold_r, rs_cold_r = py_c, rs_c
        with kvs.open(args.dir) as s:
            value = bytes((i * 7 + 3) & 0xFF for i in range(args.size))
            keys = [f"ring-{i}".encode() for i in range(ring)]
            for k in keys:
                s[k] = value
            py_ring = timed(s, keys)
        rs_ring = rust(args, "ring", ring, args.size)
        rows.append((py_cold_r, rs_cold_r, py_ring, rs_ring))
        print(
            f"round {r}: cold python {py_cold_r[0]:.0f}/s rust {rs_cold_r[0]:.0f}/s "
            f"({py_cold_r[0] / rs_cold_r[0]:.0%}); ring python {py_ring[0]:.0f}/s rust "
            f"{rs_ring[0]:.0f}/s ({py_ring[0] / rs_ring[0]:.0%})",
            flush=True,
        )
    # Threads: cold gets of disjoint key ranges, the same number of gets on 1 thread and
    # on 4.
    with kvs.open(args.dir) as s:
        rates = {}
        rest = order_all[2 * args.rounds * m :]
        keys = [f"key-{i}".encode() for i in rest]
        q = len(rest) // 2
        for n, start in ((1, 0), (4, q)):
            chunks = [keys[start + i * q // n : start + (i + 1) * q // n] for i in range(n)]
            t0 = time.perf_counter()
            ts = [threading.Thread(target=timed, args=(s, c)) for c in chunks]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            rates[n] = q / (time.perf_counter() - t0)
    shutil.rmtree(args.dir, ignore_errors=True)
    print()
    print("| round | cold: Python | cold: Rust | Python/Rust | ring: Python | ring: Rust | Python/Rust |")
    print("|---|---|---|---|---|---|---|")
    for i, (pc, rc, pr, rr) in enumerate(rows):
        print(
            f"| {i} | {pc[0]:.0f}/s (p50 {pc[1]:.0f} us) | {rc[0]:.0f}/s (p50 {rc[1]:.0f} us) "
            f"| {pc[0] / rc[0]:.0%} | {pr[0]:.0f}/s (p50 {pr[1]:.0f} us) "
            f"| {rr[0]:.0f}/s (p50 {rr[1]:.0f} us) | {pr[0] / rr[0]:.0%} |"
        )
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(
        f"\nmedians: cold Python/Rust {med([p[0] / q[0] for p, q, _, _ in rows]):.0%}, "
        f"p50 {med([p[1] for p, _, _, _ in rows]):.0f} us vs "
        f"{med([q[1] for _, q, _, _ in rows]):.0f} us; ring Python/Rust "
        f"{med([p[0] / q[0] for _, _, p, q in rows]):.0%}, p50 "
        f"{med([p[1] for _, _, p, _ in rows]):.0f} us vs {med([q[1] for _, _, _, q in rows]):.0f} us"
    )
    print(
        f"\nPython cold gets, 1 thread: {rates[1]:.0f}/s; 4 threads: {rates[4]:.0f}/s "
        f"({rates[4] / rates[1]:.2f}x)"
    )


if __name__ == "__main__":
    main()
