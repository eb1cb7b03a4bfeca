"""One router per resource; thin: parse, authorize, call a service."""

from fastapi import APIRouter

from gureum.server.api import datasets, health, tenancy

ROUTERS: list[APIRouter] = [health.router, tenancy.router, datasets.router]
