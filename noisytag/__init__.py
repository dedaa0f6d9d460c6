"""noisytag: audio tagging from few clean and many noisy labels."""

__version__ = "0.1.0"
