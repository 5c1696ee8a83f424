import sys

from qingbert.cli.main import main

sys.exit(main())
