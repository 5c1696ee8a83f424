import sys

from qingbert.cli import main

sys.exit(main())
