"""One module per figure, each with ``measure(ctx: Context) -> list[Figure]``."""
