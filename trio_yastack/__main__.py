import sys

from trio_yastack._cli import main

sys.exit(main())
