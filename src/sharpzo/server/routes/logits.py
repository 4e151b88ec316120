"""Scoring soft prompts: the one charged route."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sharpzo.shared.protocol import API_PREFIX, LogitsRequest, LogitsResponse

from ..dependencies import ChargedCallerDep
from ..errors import ERROR_RESPONSES
from ..services import MeteringDep, ScorerDep

router = APIRouter(prefix=API_PREFIX)


@router.post("/logits", response_model=LogitsResponse, responses=ERROR_RESPONSES)
async def logits(
    body: LogitsRequest, request: Request, caller: ChargedCallerDep, scorer: ScorerDep, metering: MeteringDep
) -> Response:
    """Validate, resolve the image set and the quota, score in the next batch, commit the charge, answer."""
    call = metering.arrive(caller, request.url.path, await request.body())
    replayed = call.replayed()
    if replayed is not None:
        return replayed
    job = await scorer.job(body, caller.account.name, call.stages)
    call.check_quota(job.candidates)
    response = await scorer.score(job, body.logits_dtype, call.stages)
    return await metering.commit(call, response, response.usage)
