"""Inference: the window engine (``engine``; ``predict`` runs it), ensemble members and loading
(``members``, ``ensemble``),
ONNX export (``export``, ``onnx_frontend``) and its int8 copies (``quantize``, calibrated on the clips that
``calibration`` picks), submissions (``submission``) and ``tag``, the one tagging
entry point that the CLI and the service call. Export, quantisation and ``build`` (a run's export kept
current, run by the commands) are build steps: ``tag`` and the service never import them.

May import models, audio, data and the base modules; never learning, runs, serve or report.
"""
