import sys

from sppo_nemo.cli import main

sys.exit(main())
