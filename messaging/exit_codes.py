"""Exit codes of a worker process, read by whoever supervises it (saga up, chaos, tests)."""

import os

# The stop did not write everything back (or hung and its watchdog ended it): the next
# start restores the tables from the changelogs. Restarting is right.
UNCLEAN_STOP = os.EX_TEMPFAIL  # 75
# The worker found state it refuses (schemas/state.py): restarting it cannot help.
STATE_REFUSED = os.EX_CONFIG  # 78
