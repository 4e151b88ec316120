"""Image sets: upload (encoded once on the model thread), join chunks, look up; each belongs to its uploader."""

from __future__ import annotations

from fastapi import APIRouter

from sharpzo.shared.protocol import API_PREFIX, ImageSetConcatRequest, ImageSetInfo, ImageSetRequest

from ..dependencies import CallerDep
from ..errors import ERROR_RESPONSES, ApiError
from ..images import ImageError, ImageSet, concat_set_id, image_set_id
from ..services import Services, ServicesDep

router = APIRouter(prefix=f"{API_PREFIX}/image-sets")


async def owned_image_set(services: Services, set_id: str, owner: str, field: str = "image_set") -> ImageSet:
    image_set = await services.image_sets.get(set_id, owner)
    if image_set is None:
        raise ApiError(404, f"{field}: no image set {set_id!r} on this server", code="unknown_image_set")
    return image_set


def _info(image_set: ImageSet) -> ImageSetInfo:
    return ImageSetInfo(id=image_set.id, count=image_set.count)


@router.post("", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def create_image_set(body: ImageSetRequest, caller: CallerDep, services: ServicesDep) -> ImageSetInfo:
    limit = services.settings.max_images_per_set
    if len(body.images) > limit:
        raise ApiError(422, f"images: {len(body.images)} images is over the limit of {limit}")
    owner = caller.account.name
    set_id = image_set_id(services.loaded, body.images, body.augment, body.seed, owner=owner)
    try:
        image_set = await services.on_model_thread(services.store.create, set_id, body.images, body.augment, body.seed)
    except ImageError as exc:
        raise ApiError(422, str(exc)) from exc
    await services.image_sets.record(image_set, owner)
    return _info(image_set)


@router.post("/concat", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def concat_image_sets(body: ImageSetConcatRequest, caller: CallerDep, services: ServicesDep) -> ImageSetInfo:
    owner = caller.account.name
    parts = [await owned_image_set(services, part, owner, f"parts[{i}]") for i, part in enumerate(body.parts)]
    total = sum(p.count for p in parts)
    limit = services.settings.max_images_per_set
    if total > limit:
        raise ApiError(422, f"parts: {total} images in all is over the limit of {limit}")
    image_set = await services.on_model_thread(services.store.concat, concat_set_id(body.parts, owner), parts)
    await services.image_sets.record(image_set, owner)
    return _info(image_set)


@router.get("/{set_id}", response_model=ImageSetInfo, responses=ERROR_RESPONSES)
async def get_image_set(set_id: str, caller: CallerDep, services: ServicesDep) -> ImageSetInfo:
    return _info(await owned_image_set(services, set_id, caller.account.name))
