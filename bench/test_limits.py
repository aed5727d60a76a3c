#!/usr/bin/env python3
"""Checks bench.py's limits table for the durable small-file rows: set against the per-file
commit measured inside the small-file group when there is one, else against disk_limits'
figure from the end of the run. Run by scripts/test."""
import os
import sys

os.environ["SERVERS"] = "dropgate dropgate-cache pureftpd"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

b = bench.Bench()
m = b.metric("small_ftp_up_p1", "small upload p1", "files/s", "higher", "ftp")
b.values[m.key] = {"dropgate": [900.0], "dropgate-cache": [1700.0], "pureftpd": [1800.0]}


def rows(limits):
    b.limits = limits
    return [r for r in bench.limits_table(b) if r.startswith("| small upload p1 |")]


# the end-of-run figure alone: commit 2400, peer + commit = 1 / (1/1800 + 1/2400) = 1029
end_only = rows({"small_sync": 2400.0})
assert len(end_only) == 2, end_only                   # durable only: the page-cache mode has no row
assert "| 2400 | 0.38 |" in end_only[0] and "in the small-file group" not in end_only[0], end_only
assert "(1800 files/s)" in end_only[1] and "| 1029 | 0.87 |" in end_only[1], end_only

# with samples from the group, their median wins: commit 2700, peer + commit = 1080
grouped = rows({"small_sync": 2400.0, "small_sync_group": 2700.0})
assert "in the small-file group | 2700 | 0.33 |" in grouped[0], grouped
assert "| 1080 | 0.83 |" in grouped[1], grouped
print("limits_table: ok")
