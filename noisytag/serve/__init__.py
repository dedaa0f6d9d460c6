"""The tagging service: a trained run behind an HTTP API and a web page (``service``; page assets in ``web/``).

A front door: may import runs and everything below; nothing imports it but the CLI.
"""
