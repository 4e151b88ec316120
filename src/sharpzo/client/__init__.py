"""SharpZO client: black-box prompt tuning of a hosted CLIP through its API alone (no torch)."""

from sharpzo.data.user_data import InMemoryData

from .api import ApiClient, ApiRequestError, UsageMismatch
from .runner import tune, tune_async
from .settings import TuneSettings
from .tune import TuneResult

__all__ = [
    "ApiClient", "ApiRequestError", "InMemoryData", "TuneResult", "TuneSettings", "UsageMismatch", "tune", "tune_async"
]
