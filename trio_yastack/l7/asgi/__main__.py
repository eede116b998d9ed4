"""``python -m trio_yastack.l7.asgi APP [--bind HOST:PORT] [options]``: our server on kernel
sockets, no stack and no NIC (``yastack serve --kernel``), for comparing the server alone with
hypercorn and uvicorn.  Every ``yastack serve`` option is accepted."""

from __future__ import annotations

import sys

from trio_yastack._cli import main

if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(main(["serve", "--kernel", *arguments]))
