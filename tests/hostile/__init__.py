"""Hostile peers against a real trioport SSH server on loopback (issue 2, Proof)."""
