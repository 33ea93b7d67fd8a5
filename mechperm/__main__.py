import sys

from mechperm.cli import main

sys.exit(main())
