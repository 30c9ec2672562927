import sys

from hostproxy.cli import main

sys.exit(main())
