import sys

from semspark.cli import main

sys.exit(main())
