"""``python -m comfy_worker_client``: the same as the ``comfy-worker-client`` console script."""

import sys

from comfy_worker_client.run import main

sys.exit(main())
