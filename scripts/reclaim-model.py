#!/usr/bin/env python3
"""A model of kvs's log and reclaimer under overwrites, to see what a victim policy or a
way of placing records can reach before building it (standard library only).

Records are all one size; a segment holds `--seg-records` of them. The store is filled
with `--keys` keys in random order, then overwritten `--passes` times as many times as
there are keys (Zipf over the keys with `--zipf S`, scattered over them, or uniform with
`--zipf 0`). Whenever the dead share of the file is above `--dead`, the reclaimer takes
one victim and copies its live records out (to a relocation stream, or back to the log).
A put whose key's last version is among the last `--ring` puts still in the log's open
segment replaces it for free, as a record that dies in the ring is never written (kvs's
ring holds up to 8 MiB or 20 ms of puts; `--ring 30` gives the fifth of the bytes put
that die there under Zipf 0.99 in the harness's reclaim phase).

Write amplification = (records written) / (records put), as the harness counts bytes;
space = records held in segments / live records, worst and mean after the first pass.

    python3 scripts/reclaim-model.py             # the table in README ("Reclaiming")
    python3 scripts/reclaim-model.py --dead 0.22 # another space budget
"""

import argparse
import bisect
import math
import random


def simulate(keys, seg_records, passes, zipf, dead, ring, policy, puts_by, copies_by, seed):
    rnd = random.Random(seed)
    if zipf > 0:
        weights = [1 / (r + 1) ** zipf for r in range(keys)]
        total = sum(weights)
        cdf, acc = [], 0.0
        for w in weights:
            acc += w / total
            cdf.append(acc)
    rank_to_key = list(range(keys))
    rnd.shuffle(rank_to_key)
    rank_of = {k: r for r, k in enumerate(rank_to_key)}

    segs = {}  # id -> {"live": set of keys, "written": n, "born": clock, "stream": name}
    where = {}  # key -> segment id
    when = {}  # key -> clock of its last put
    open_seg = {}  # stream -> segment id
    est = {}  # key -> its estimated interval between puts (puts by "interval")
    state = {"clock": 0, "next": 0, "held": 0, "copies": 0, "absorbed": 0}

    def append(stream, key):
        s = open_seg.get(stream)
        if s is None or segs[s]["written"] >= seg_records:
            s = state["next"]
            state["next"] += 1
            segs[s] = {"live": set(), "written": 0, "born": state["clock"], "stream": stream}
            open_seg[stream] = s
        segs[s]["written"] += 1
        segs[s]["live"].add(key)
        old = where.get(key)
        if old in segs:
            segs[old]["live"].discard(key)
        where[key] = s
        state["held"] += 1

    def rank_class(key):
        return "c%d" % int(math.log(rank_of[key] + 1, 4))

    def put(key):
        state["clock"] += 1
        stream = "log"
        if puts_by == "class":
            stream = rank_class(key)
        elif puts_by == "recent":
            # What a store can know: a key put again within half as many puts as there are
            # keys is taken for hot.
            recent = key in when and state["clock"] - when[key] < keys / 2
            stream = "hot" if recent else "log"
        elif puts_by in ("last", "interval"):
            # Five streams by the interval between the key's puts, in powers of 4 (what a
            # store can know too, with a field per key in memory): the last interval, or
            # an average of the intervals that halves the weight of each older one.
            if key in when:
                iv = state["clock"] - when[key]
                if puts_by == "interval":
                    iv = est[key] = iv if key not in est else (est[key] + iv) / 2
                stream = "iv%d" % min(int(math.log(iv / keys * 64 + 1, 4)), 4)
            else:
                stream = "new"
        old = where.get(key)
        if (
            ring
            and key in when
            and state["clock"] - when[key] <= ring
            and old is not None
            and old == open_seg.get(stream)
        ):
            state["absorbed"] += 1
        else:
            append(stream, key)
        when[key] = state["clock"]

    def clean():
        opened = set(open_seg.values())
        best, value = None, -1.0
        for s, g in segs.items():
            if s in opened:
                continue
            u = len(g["live"]) / g["written"]
            if u >= 1:
                continue
            if policy == "greedy":
                v = 1 - u
            else:  # LFS cost-benefit, age from the segment's birth
                v = (1 - u) * (state["clock"] - g["born"] + 1) / (1 + u)
            if v > value:
                best, value = s, v
        g = segs.pop(best)
        state["held"] -= g["written"]
        for key in sorted(g["live"], key=lambda k: when[k]):
            if copies_by == "log":
                stream = "log"
            elif copies_by == "class":
                stream = "copy-" + rank_class(key)
            else:
                stream = "relocation"
            append(stream, key)
            state["copies"] += 1

    order = list(range(keys))
    rnd.shuffle(order)
    for k in order:
        put(k)
    puts, samples = 0, []
    for i in range(passes * keys):
        if zipf > 0:
            rank = min(bisect.bisect_left(cdf, rnd.random()), keys - 1)
            k = rank_to_key[rank]
        else:
            k = rnd.randrange(keys)
        put(k)
        puts += 1
        while (state["held"] - keys) / state["held"] > dead:
            clean()
        if i >= keys:
            samples.append(state["held"] / keys)
    written = puts - state["absorbed"] + state["copies"]
    return written / puts, max(samples), sum(samples) / len(samples)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=20000)
    p.add_argument("--seg-records", type=int, default=320, help="32 MiB of 100 KiB")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--zipf", type=float, default=0.99)
    p.add_argument("--dead", type=float, default=0.28, help="the dead share held")
    p.add_argument("--ring", type=int, default=30)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rows = [
        ("one put stream, copies to the log's tail (format 5)", "cb", "one", "log"),
        ("one put stream, relocation stream, greedy", "greedy", "one", "relocation"),
        ("one put stream, relocation stream, cost-benefit (kvs)", "cb", "one", "relocation"),
        ("one put stream, copies split by key frequency (oracle)", "cb", "one", "class"),
        ("hot puts (key put again within keys/2 puts) apart, cost-benefit", "cb", "recent", "relocation"),
        ("puts in 5 streams by the key's last interval between puts", "cb", "last", "relocation"),
        ("puts in 5 streams by the key's average interval between puts", "cb", "interval", "relocation"),
        ("puts and copies split by key frequency (oracle), cost-benefit", "cb", "class", "class"),
        ("puts and copies split by key frequency (oracle), greedy", "greedy", "class", "class"),
    ]
    print(
        f"{a.keys} keys, {a.seg_records} records a segment, {a.passes} passes, "
        f"{'Zipf %g' % a.zipf if a.zipf > 0 else 'uniform'}, dead share held at {a.dead}, "
        f"ring {a.ring}"
    )
    print("| placement and victims | write amp | space worst / mean |")
    print("|---|---|---|")
    for name, policy, puts_by, copies_by in rows:
        wa, worst, mean = simulate(
            a.keys, a.seg_records, a.passes, a.zipf, a.dead, a.ring,
            policy, puts_by, copies_by, a.seed,
        )
        print(f"| {name} | {wa:.2f} | {worst:.2f} / {mean:.2f} |", flush=True)


if __name__ == "__main__":
    main()
