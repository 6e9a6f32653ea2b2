#!/usr/bin/env python3
"""Reads hyperfine's JSON exports and prints "median min max" in ms, one line per command.

  hf.py FILE.json ...            each command of each file
  hf.py --merge FILE.json ...    each command, its runs pooled over all the files (rounds of
                                 one run of every command, taken in turn)
"""
import json
import statistics
import sys


def line(t):
    print(f"{statistics.median(t) * 1000:.3f} {min(t) * 1000:.3f} {max(t) * 1000:.3f}")


args = sys.argv[1:]
if args and args[0] == "--merge":
    pooled = []
    for path in args[1:]:
        for i, r in enumerate(json.load(open(path))["results"]):
            if i == len(pooled):
                pooled.append([])
            pooled[i].extend(r["times"])
    for t in pooled:
        line(t)
else:
    for path in args:
        for r in json.load(open(path))["results"]:
            line(r["times"])
