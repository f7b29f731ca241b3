"""The open attack challenge: verify submitted adversarial examples against a release
bundle, score the model on them, and keep a leaderboard."""

from .ledger import (
    DEFAULT_LEDGER,
    DuplicateSubmission,
    append_entry,
    check_names,
    make_entry,
    read_ledger,
    render_board,
)
from .verify import (
    EPS_TOLERANCE,
    Submission,
    SubmissionError,
    VerifyResult,
    check_values,
    read_submission,
    score,
    verify_submission,
)

__all__ = [
    "DEFAULT_LEDGER",
    "EPS_TOLERANCE",
    "DuplicateSubmission",
    "Submission",
    "SubmissionError",
    "VerifyResult",
    "append_entry",
    "check_names",
    "check_values",
    "make_entry",
    "read_ledger",
    "read_submission",
    "render_board",
    "score",
    "verify_submission",
]
