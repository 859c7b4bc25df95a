"""Signed checkpoints of the audit chain, as CloudTrail's digest files.

A checkpoint states, signed with Ed25519, that the chain's link ``seq`` had
``digest``: whoever rewrites the chain after it (recomputing every digest)
cannot make it pass through that digest again without the signing key. An
``anchor`` is the same statement for the last link of a pruned prefix: the
verifier starts after it, trusting its signature.

The keys are audit.signing's.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from django.db import transaction
from django.utils import timezone

from audit.chain import chain_head
from audit.models import ChainCheckpoint, CheckpointKind
from audit.signing import key_id, signing_key, trusted_keys


def signed_message(kind: str, seq: int, digest: str, created_at: datetime, key: str) -> bytes:
    return f"sluice-audit-checkpoint|{kind}|{seq}|{digest}|{created_at.isoformat()}|{key}".encode()


def checkpoint_signature_valid(checkpoint: ChainCheckpoint) -> bool:
    """Is ``checkpoint`` signed by a trusted key, over exactly its fields?"""
    key = trusted_keys().get(checkpoint.key_id)
    if key is None:
        return False
    message = signed_message(
        checkpoint.kind, checkpoint.seq, checkpoint.digest, checkpoint.created_at, checkpoint.key_id
    )
    try:
        key.verify(base64.b64decode(checkpoint.signature), message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def checkpoint_sign(*, kind: str, seq: int, digest: str, using: str) -> ChainCheckpoint:
    """Store a checkpoint of ``kind`` for the link ``seq`` whose digest is ``digest``."""
    private = signing_key()
    kid = key_id(private.public_key())
    # Stored to the microsecond, so the signed text is what is read back.
    now = timezone.now()
    signature = private.sign(signed_message(kind, seq, digest, now, kid))
    return ChainCheckpoint.objects.using(using).create(
        seq=seq,
        digest=digest,
        kind=kind,
        created_at=now,
        key_id=kid,
        signature=base64.b64encode(signature).decode(),
    )


def checkpoint_write(*, using: str, force: bool = False) -> ChainCheckpoint | None:
    """Sign the chain's head now, unless it has not grown since the last checkpoint.

    ``force``: sign even an unchanged head (the command's default is to).
    """
    with transaction.atomic(using=using):
        head = chain_head(using=using)
        last = ChainCheckpoint.objects.using(using).order_by("-seq", "-pk").first()
        if head.seq == 0 or (not force and last is not None and last.seq >= head.seq):
            return None
        return checkpoint_sign(
            kind=CheckpointKind.CHECKPOINT, seq=head.seq, digest=head.digest, using=using
        )
