"""leadloop: a self-hosted daemon that works sales leads over email."""

__version__ = "0.1.0"
