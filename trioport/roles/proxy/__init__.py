"""The proxy service: the cluster's front door for users.

- :mod:`.service`: :func:`~.service.serve`, the host identity and start-up order;
- :mod:`.ssh_proxy`: the SSH port (3023): user certificates, ``proxy:HOST:PORT``
  and ``direct-tcpip`` pipes to nodes, node listings for ``tsh ls``;
- :mod:`.router`: which node a user means, and whether her roles let her see it;
- :mod:`.web`: the HTTPS port (3080): ``tsh login`` and invites, on Teleport's paths;
- :mod:`.state`: what those share (the link to auth, the CAs);
- :mod:`.client`, :mod:`.profile` and :mod:`.transfer`: the client side ``tsh`` is built on.

The proxy keeps nothing persistent but its own identity; sessions run end to end
between the user and the node, so the proxy never sees their contents.
"""
