"""config.toml, as the README promises: every setting, each at its default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from service.config import Settings, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config.toml"


def test_config_toml_lists_every_setting() -> None:
    text = CONFIG.read_text()
    missing = []
    for section in dataclasses.fields(Settings):
        table = re.search(rf"^\[{section.name}\]$(.*?)(?=^\[|\Z)", text, re.M | re.S)
        assert table is not None, f"[{section.name}] is missing"
        for key in dataclasses.fields(section.default_factory()):  # type: ignore[operator]
            # Secrets are shown commented out: they belong in the environment.
            if not re.search(rf"^#? ?{key.name} = ", table.group(1), re.M):
                missing.append(f"{section.name}.{key.name}")
    assert missing == []


def test_config_toml_holds_the_defaults() -> None:
    assert load_settings(CONFIG, env={}) == Settings()
