"""VIF Gatekeeper on AWS Chalice: wiring only; the work lives in chalicelib."""

import os

from chalice import Chalice, ConvertToMiddleware, Rate

from chalicelib import reconcile, runtime
from chalicelib.config import ConfigError
from chalicelib.log import logger

app = Chalice(app_name="vif-gatekeeper")
app.register_middleware(ConvertToMiddleware(logger.inject_lambda_context))

# Read when the app is packaged (`make package STAGE=...` exports it from .chalice/config.json).
POLL_MINUTES = int(os.environ.get("VIFGATE_POLL_MINUTES", "1"))


@app.schedule(Rate(POLL_MINUTES, unit=Rate.MINUTES), name="poll")
def poll(event):
    try:
        return reconcile.run_cycle(runtime.get()).summary()
    except ConfigError as exc:
        # Fail closed and loudly: nothing was confirmed, and the invocation counts as an error.
        logger.error("invalid config: nothing confirmed", extra={"problems": exc.problems, "source": exc.source})
        raise


@app.route("/health")
def health():
    return {"ok": True}
