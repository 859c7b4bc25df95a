"""``manage.py sluice_audit verify|checkpoint|prune|erase|seal``: the audit trail's
tamper evidence and retention, for ops and cron (the logic is in audit.verify,
audit.checkpoints, audit.retention and audit.chain)."""

from __future__ import annotations

from argparse import ArgumentTypeError
from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from audit.chain import seal_legacy
from audit.checkpoints import checkpoint_write
from audit.models import AuditRecord
from audit.retention import audit_prune, audit_records_erase
from audit.verify import chain_verify


def _moment(value: str) -> datetime:
    """A date (its midnight, UTC) or an ISO datetime (UTC unless it says)."""
    moment = parse_datetime(value)
    if moment is None:
        try:
            day = parse_date(value)
        except ValueError:
            day = None
        if day is None:
            raise ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD) or an ISO time")
        moment = datetime.combine(day, time.min)
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Verify the audit chain, sign a checkpoint, prune expired records, erase named "
        "ones, seal old ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        verify = sub.add_parser(
            "verify", help="Check every link, record and checkpoint; exit 1 at the first break."
        )
        verify.add_argument(
            "--since",
            type=_moment,
            default=None,
            help="start at the last checkpoint at or before this date (YYYY-MM-DD or ISO time)",
        )
        sub.add_parser("checkpoint", help="Sign a checkpoint of the chain's head now.")
        prune = sub.add_parser("prune", help="Erase records past their app's retention.")
        prune.add_argument("--dry-run", action="store_true", help="only count them")
        erase = sub.add_parser(
            "erase",
            help="Erase these records now (a data subject's request, say); the chain "
            "stays verifiable (an erasure link takes each one's place).",
        )
        erase.add_argument("request_ids", nargs="+", metavar="REQUEST_ID")
        sub.add_parser("seal", help="Seal records stored before the chain existed.")

    def handle(self, *args: Any, **options: Any) -> None:
        using = router.db_for_write(AuditRecord)
        action = options["action"]
        if action == "verify":
            report = chain_verify(using=using, since=options["since"])
            if not report.ok:
                raise CommandError(report.summary(), returncode=1)
            self.stdout.write(report.summary())
        elif action == "checkpoint":
            checkpoint = checkpoint_write(using=using, force=True)
            if checkpoint is None:
                self.stdout.write("audit chain is empty: no checkpoint")
            else:
                self.stdout.write(
                    f"audit checkpoint signed at seq {checkpoint.seq} (key {checkpoint.key_id})"
                )
        elif action == "prune":
            self.stdout.write(audit_prune(dry_run=options["dry_run"]).summary())
        elif action == "erase":
            wanted = list(dict.fromkeys(options["request_ids"]))
            erased = audit_records_erase(request_ids=wanted)
            self.stdout.write(f"{erased} of {len(wanted)} audit record(s) erased")
            if erased < len(wanted):  # a typo must not pass for done
                raise CommandError(f"{len(wanted) - erased} not found", returncode=1)
        else:
            self.stdout.write(f"audit chain: {seal_legacy(using=using)} earlier records sealed")
