"""trioport: an access plane for SSH, in Python on trio.

The SSH protocol lives in :mod:`trioport.sshproto` (sans-IO) and
:mod:`trioport.ssh` (the trio driver); the cluster's services live in
:mod:`trioport.roles`. See ``docs/architecture.md`` for the map.
"""

__version__ = "0.1.0"
