"""The cyclic collector in the suite's process: what lives for the run is kept from its walk."""

from __future__ import annotations

import gc


def freeze_survivors() -> None:
    """Freeze what is alive now; collected first, so that no garbage is frozen with it.

    The suite's process holds some 190,000 objects for the whole run (the imports: aiohttp,
    botocore, twilio, the DBOS peer). Unfrozen, every full collection walks them again, a
    100-250 ms stall of whatever in-process test has its event loop running then.
    """
    gc.collect()
    gc.freeze()
