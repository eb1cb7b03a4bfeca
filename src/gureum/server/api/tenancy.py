"""PLACEHOLDER: replaced by the tenancy work."""

from fastapi import APIRouter

router = APIRouter(tags=["tenancy"])
