"""``sluice_config import FILE`` / ``sluice_config export [--format json|yaml]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from django.core.management.base import BaseCommand, CommandError, CommandParser

from streaming.config_io import ConfigError, config_export, config_import


class Command(BaseCommand):
    help = (
        "Import or export providers, routes, prices and apps' policies (YAML or JSON). "
        "Never exports secrets."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="apply a YAML/JSON file ('-' for stdin)")
        imp.add_argument("file")
        exp = sub.add_parser("export", help="print the configuration")
        exp.add_argument("--format", choices=["yaml", "json"], default="yaml")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "import":
            self._import(options["file"])
        else:
            self._export(options["format"])

    def _import(self, file: str) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise CommandError(f"{file} is not valid YAML or JSON: {exc}") from None
        try:
            counts = config_import(data)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"imported: {counts['created']} created, {counts['updated']} updated")

    def _export(self, fmt: str) -> None:
        data = config_export()
        if fmt == "json":
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write(yaml.safe_dump(data, sort_keys=False))
