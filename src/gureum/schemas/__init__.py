"""Request/response models shared by the server and the SDK."""
