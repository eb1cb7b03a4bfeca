"""Benchmarks. Their drivers join heads that `start_head` pins to loopback: Ray reads the switch
that keeps a driver on loopback once, at import, so it is set before any benchmark imports Ray."""

import os

from gureum.compute.local_ray import LOCAL_AUTH

os.environ.update(LOCAL_AUTH)
