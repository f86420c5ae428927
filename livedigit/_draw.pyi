"""Types of the compiled preprocessing of strokes (livedigit/_draw.c)."""

def draw(
    image: object,
    path: object,
    shares: object,
    points: object,
    lengths: object,
    surface_side: float,
    width: float,
    box: float,
    min_extent: float,
    stray_side: float,
    stray_gap: float,
) -> bool: ...
def gather(
    strokes: object, max_strokes: int, max_points: int, max_coordinate: float
) -> tuple[bytearray, bytearray] | None: ...
