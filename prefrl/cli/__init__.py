"""The ``prefrl`` command line. Nothing in the package imports it."""
