"""``python -m engine.client``: the same as the ``comfy-worker-client`` console script."""

import sys

from engine.client.run import main

sys.exit(main())
