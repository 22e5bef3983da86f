"""The one error the PairRM backend raises for what a user can fix."""

from __future__ import annotations

from sppo_nemo.schema.errors import UserError


class PairRMError(UserError):
    """A missing, corrupt or mismatched PairRM file (config, tokenizer, weights) or a failed judge
    worker; the message names the file or device and the fix."""
