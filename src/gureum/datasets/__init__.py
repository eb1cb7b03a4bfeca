"""Dataset internals shared by the server: reading pushed content (scan), safe archive
extraction (archive) and the bridge from an async request body to blocking readers (streams).
"""
