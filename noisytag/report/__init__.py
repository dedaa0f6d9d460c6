"""Results read back: the HTML report (``page``), the console summary (``summary``), figures (``plots``)
and the augmentation gallery (``gallery``).

A front door: may import runs and everything below; nothing imports it but the CLI and ablate.
"""
