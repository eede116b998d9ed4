"""Per-core runtimes: the poll loop that runs one stack instance on one port queue.

Software RSS (Toeplitz hash, redirection table) and the rings between cores arrive with the
per-core work; the poll loop is already shaped for them (one queue per runtime).
"""

from ._runtime import PollLoop as PollLoop
from ._runtime import RuntimeStatistics as RuntimeStatistics
