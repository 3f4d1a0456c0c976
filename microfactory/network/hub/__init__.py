"""The hub side of the network: ingest, pinning, mirroring, the shop list and routing.

A hub (`MICROFACTORY_HUB=true`) takes shops' signed capacity reports, checks them against
each shop's pinned key, stores them exactly as received (so their signatures travel to other
hubs), and keeps a derived index of them that routing queries read.
"""
