"""The management API (``/api/v1/``, djangorestframework): apps and their tokens.

Bearer tokens of the gateway's own apps with the ``admin`` scope. Every write
goes through accounts.services / accounts.tokens, so the API checks what the
admin and the shell check.
"""
