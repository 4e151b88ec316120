"""Image sets: upload (encoded once on the model thread), join chunks, look up; each belongs to its uploader."""

from __future__ import annotations

from fastapi import APIRouter

from sharpzo.shared.protocol import API_PREFIX, ImageSetConcatRequest, ImageSetInfo, ImageSetRequest

from ..dependencies import CallerDep
from ..errors import ERROR_RESPONSES
from ..images import ImageSet
from ..services import ImageSetsDep

router = APIRouter(prefix=f"{API_PREFIX}/image-sets")


def _info(image_set: ImageSet) -> ImageSetInfo:
    return ImageSetInfo(id=image_set.id, count=image_set.count, stem_spread=image_set.stem_spread)


@router.post("", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def create_image_set(body: ImageSetRequest, caller: CallerDep, image_sets: ImageSetsDep) -> ImageSetInfo:
    return _info(await image_sets.create(caller.account.name, body.images, body.augment, body.seed, body.visual))


@router.post("/concat", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def concat_image_sets(body: ImageSetConcatRequest, caller: CallerDep, image_sets: ImageSetsDep) -> ImageSetInfo:
    return _info(await image_sets.concat(caller.account.name, body.parts))


@router.get("/{set_id}", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def get_image_set(set_id: str, caller: CallerDep, image_sets: ImageSetsDep) -> ImageSetInfo:
    return _info(await image_sets.owned(set_id, caller.account.name))
