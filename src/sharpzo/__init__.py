"""SharpZO: black-box prompt tuning of CLIP as a service.

Subpackages: ``client`` (tuning through the API, no torch), ``server`` (the inference service),
``shared`` (the wire protocol), ``data`` (datasets and the few-shot protocol, used by both sides)
and ``tools`` (offline model tools: pretraining, zero-shot, white-box CoOp).
"""
