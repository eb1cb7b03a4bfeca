"""The artifact store: content-addressed blobs over any fsspec URL."""
