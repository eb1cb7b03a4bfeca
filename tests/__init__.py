"""Tests. Drivers in the test process join heads that `start_head` pins to loopback; Ray reads
the switch that keeps a driver on loopback once, at import, so it (with the rest of
compute.local_ray.LOCAL_AUTH) is set here, before conftest or any test module imports Ray."""

import os

from gureum.compute.local_ray import LOCAL_AUTH

os.environ.update(LOCAL_AUTH)
