"""Training and export of the livedigit model: ``python -m train --help``."""
