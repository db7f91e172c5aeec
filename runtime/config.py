"""One way to report a config that fails validation: a line per problem, naming the file and the field."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(origin: str, exc: ValidationError) -> str:
    """``origin: field.path: message`` for every problem pydantic found, one per line."""
    return "\n".join(
        f"{origin}: {'.'.join(str(part) for part in err['loc']) or '(top level)'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    )
