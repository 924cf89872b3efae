"""Benchmarks: each runs its baseline and candidate in one process, reports medians and
ratios, and returns JSON-ready results (`store`, `extract`, `score`, `cluster`). May import
any stage and shared helpers; never cli (the `ssimcache bench` commands call in here).
"""
