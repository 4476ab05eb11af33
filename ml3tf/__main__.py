"""``python -m ml3tf …`` is the ``ml3tf`` command."""

from ml3tf.cli import run

run()
