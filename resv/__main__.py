import sys

from resv.cli import main

sys.exit(main())
