"""Results read back: the HTML report (``page``), the console summary (``summary``), figures (``plots``),
the augmentation gallery (``gallery``) and the data commands' console tables (``tables``).

A front door: may import runs and everything below; nothing imports it but the CLI and ablate.
"""
