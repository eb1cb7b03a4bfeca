"""PLACEHOLDER: replaced by the datasets work."""

from fastapi import APIRouter

router = APIRouter(tags=["datasets"])
