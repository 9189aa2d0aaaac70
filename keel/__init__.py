"""Keel's composition root and command line: builds the layers from settings and runs them."""
