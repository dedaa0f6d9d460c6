"""Inference: the window engine (``predict``), ensemble members and loading (``members``, ``ensemble``),
ONNX export (``export``, ``onnx_frontend``) and its int8 copies (``quantize``, calibrated on the clips that
``calibration`` picks), submissions (``submission``) and ``tag``, the one tagging
entry point that the CLI and the service call.

May import models, audio, data and the base modules; never learning, runs, serve or report.
"""
