"""The bound on a text that enters the dispatcher's state (reasons, error messages, alert values).

1 KiB: room for a handful of column names or an error's first lines, small beside the 256 KiB
state of a Map item (docs/architecture.md, State size per item). No imports: every module may use it.
"""

MAX_REASON_CHARS = 1024


def bounded(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    # The suffix is at most 32 characters: keep that much room for it.
    kept = limit - 32
    return f"{text[:kept]}…(+{len(text) - kept} more characters)"
