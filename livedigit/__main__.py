import sys

from livedigit.cli import main

sys.exit(main())
