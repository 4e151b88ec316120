"""What the calling key has been charged."""

from __future__ import annotations

from fastapi import APIRouter

from sharpzo.shared.protocol import API_PREFIX, AccountUsage

from ..dependencies import CallerDep
from ..errors import ERROR_RESPONSES

router = APIRouter(prefix=API_PREFIX)


@router.get("/usage", response_model=AccountUsage, responses=ERROR_RESPONSES)
async def usage(caller: CallerDep) -> AccountUsage:
    return caller.usage
