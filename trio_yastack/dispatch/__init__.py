"""Per-core runtimes: the poll loop, software RSS, the rings between cores, the launcher.

One trio runtime and one stack per core (one process per core: the GIL allows no more).  A
frame's flow is assigned to a core by the Toeplitz hash of its 4-tuple and a redirection table
(:func:`toeplitz_hash`, :class:`Reta`); frames that arrive on the wrong core travel to their
owner through single-producer/single-consumer rings in shared memory (:class:`SpscRing`).
:class:`PollLoop` runs one core's stack on its port queue (strict about stack exceptions in
tests: ``STRICT_ENV``); :func:`launch` forks a worker per core, each with its
:class:`CoreLayout`.
"""

from ._launcher import WorkerFailed as WorkerFailed
from ._launcher import launch as launch
from ._launcher import make_layouts as make_layouts
from ._percore import CoreLayout as CoreLayout
from ._percore import DispatchStatistics as DispatchStatistics
from ._ring import RingStatistics as RingStatistics
from ._ring import SpscRing as SpscRing
from ._rss import DEFAULT_RSS_KEY as DEFAULT_RSS_KEY
from ._rss import Reta as Reta
from ._rss import flow_core as flow_core
from ._rss import toeplitz_hash as toeplitz_hash
from ._runtime import AUTOCORK_ENV as AUTOCORK_ENV
from ._runtime import STRICT_ENV as STRICT_ENV
from ._runtime import PollLoop as PollLoop
from ._runtime import RuntimeStatistics as RuntimeStatistics
from ._runtime import strict_from_environment as strict_from_environment
