import sys

from vlmbias.cli import main

sys.exit(main())
