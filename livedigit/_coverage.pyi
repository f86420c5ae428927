"""Types of the compiled preprocessing (livedigit/_coverage.c)."""

def coverage(
    out: object, placed: object, lengths: object, xs: object, ys: object, radius_and_half: float, reach: float
) -> None: ...
