"""The `gureum` command line: a thin layer over the SDK."""
