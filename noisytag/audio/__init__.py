"""Clip → model input, one owner: decode/resample/trim (``decode``), log-mel (``features``), window
arithmetic (``windows``) and ``model_input``, the one path from audio to what a model sees (float16
rounding, windows, normalisation by ``data.normalize``) that the feature cache (``cache``, filled by
``extract``'s process pool), training, predict, tag and serve all go through; ``image`` draws a log-mel.

May import data and the base modules; never models, learning, inference or runs.
"""
