"""ssimcache pipeline: images, backbone, extraction, head, training, scoring and the CLI."""

__version__ = "0.1.0"
