"""Every setting is one field, one flag and one environment variable, and each is documented."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from livedigit.config import Settings

OPERATIONS = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_every_setting_has_a_row_in_the_settings_table_of_operations_md() -> None:
    table = OPERATIONS.read_text(encoding="utf-8").split("## Settings and limits", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `--([a-z0-9-]+)`", table, flags=re.MULTILINE))
    flags = {field.name.replace("_", "-") for field in dataclasses.fields(Settings)}
    assert flags - documented == set(), "settings without a row in docs/operations.md"
    assert documented - flags == set(), "rows in docs/operations.md for settings that do not exist"


def test_a_flag_and_its_environment_variable_set_the_same_field() -> None:
    parser = argparse.ArgumentParser()
    Settings.add_arguments(parser)
    from_flag = Settings.from_arguments(parser.parse_args(["--pace-reads-above", "0.5"]))
    from_environment = Settings.from_env({"LIVEDIGIT_PACE_READS_ABOVE": "0.5"})
    assert from_flag.pace_reads_above == from_environment.pace_reads_above == 0.5
    assert Settings().pace_reads_above == 0.95
