"""Clip → model input, one owner: decode/resample/trim (``decode``), log-mel (``features``), the
memory-mapped feature cache (``cache``), window arithmetic (``windows``) and the model input itself
(normalisation, windows of a clip) that training, predict, tag and serve all share.

May import data and the base modules; never models, learning, inference or runs.
"""
