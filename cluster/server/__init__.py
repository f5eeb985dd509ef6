"""The member: its loop, apply, peer transport and client-facing servers."""
