import sys

from ldrop.cli import main

sys.exit(main())
