"""The tagging service: a trained run behind an HTTP API and a web page. ``service`` loads the run's
Tagger once and tags uploads through ``Tagger.tag`` (the entry of ``noisytag tag``) within the limits;
``app`` is the HTTP plumbing (FastAPI routes, error mapping, the page in ``web/``).

A front door: may import runs and everything below; nothing imports it but the CLI.
"""
