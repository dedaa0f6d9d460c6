"""Learning: batch augmentations (``augment``), the window loader (``loader``), one fold's training
(``train``), folds (``folds``), noisy-clip selection and its detectors (``selection``, ``detectors``).

May import infer (a teacher's predictions), models, audio, data and the base modules; never runs,
serve or report.
"""
