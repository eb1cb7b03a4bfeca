"""The control plane: REST API, auth, metadata."""
