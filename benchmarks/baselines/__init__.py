"""Contenders the engine is compared with, each a script run as its own process.

Every script prints one JSON line on stdout, `{"records": N, "bytes": B, ...}`: what it
processed, so that records/s and MB/s are computed the same way for all of them.
"""
