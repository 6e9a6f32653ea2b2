#!/usr/bin/env python3
"""Reads hyperfine's JSON exports and prints one markdown table row per command pair.

  hf.py FILE.json ...          prints "median min max" in ms for each command of each file
"""
import json
import statistics
import sys

for path in sys.argv[1:]:
    for r in json.load(open(path))["results"]:
        t = r["times"]
        print(f"{statistics.median(t) * 1000:.3f} {min(t) * 1000:.3f} {max(t) * 1000:.3f}")
