"""The data plane: Ray Serve replicas that authenticate, limit, meter and answer requests.

Everything on a request's path stays in the replica's memory; keys come from a snapshot the
replica refreshes off the path, and usage goes to a local spool shipped in batches.
"""
