"""Settings: the preset dataclasses, TOML loading, ``--set`` overrides and validation.

Presets live in the repository's top-level ``envs/`` and are installed with the package as
``prefrl._presets``. Never imports torch.
"""
