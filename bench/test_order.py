#!/usr/bin/env python3
"""Checks bench.py's order of servers per round (round_orders): run by scripts/test."""
import os
import sys

os.environ.setdefault("ROUNDS", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

six = ["dropgate", "dropgate-cache", "vsftpd", "pureftpd", "proftpd", "unftp"]
orders = bench.round_orders(six, 3)
assert orders[0] == six, orders                      # round 1 keeps SERVERS' order
assert all(sorted(o) == sorted(six) for o in orders), orders
assert orders == bench.round_orders(six, 3)          # seeded: a rerun repeats it
pairs = []
last = None
for o in orders:
    pairs += list(zip([last] + o[:-1], o))
    last = o[-1]
assert len(pairs) == len(set(pairs)), pairs          # nobody follows the same server twice
assert bench.round_orders([], 3) == [[], [], []]     # a row no server measures
assert bench.round_orders(["a"], 2) == [["a"], ["a"]]
assert [s for _, s in bench.rounds_over(["x", "y"])] == ["x", "y", "y", "x", "x", "y"]
print("round_orders: ok")
