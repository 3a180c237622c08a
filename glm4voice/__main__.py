import sys

from glm4voice.cli import main

sys.exit(main())
