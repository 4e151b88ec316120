"""SharpZO client: black-box prompt tuning of a hosted CLIP through its API alone (no torch)."""

from .api import ApiClient, ApiError, Budget, BudgetExhausted, UsageMismatch
from sharpzo.data.user_data import InMemoryData
from .runner import tune, tune_async
from .tune import TuneResult, TuneSettings

__all__ = ["ApiClient", "ApiError", "Budget", "BudgetExhausted", "InMemoryData", "TuneResult", "TuneSettings", "UsageMismatch", "tune", "tune_async"]
