"""``python -m ml3tf …`` is the ``ml3tf`` command."""

import sys

from ml3tf.cli import main

sys.exit(main())
