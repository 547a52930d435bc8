import sys

from pipeline.share.cli import main

sys.exit(main())
