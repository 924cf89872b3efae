"""`python -m pipeline` is the `ssimcache` CLI."""

from pipeline.cli import main

main()
