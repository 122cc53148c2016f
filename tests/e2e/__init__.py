"""End to end: ``trioport run``, ``tctl`` and ``tsh`` as separate processes, as a user runs them."""
