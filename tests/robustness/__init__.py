"""Fault injection with a linearizability checker (Jepsen-style, after etcd's robustness tests).

A run starts three real members (``tests.e2e.procs.Cluster``), drives recorded traffic from
several clients pinned to each member (and two taking a v3lock lock) while one fault is
injected (SIGKILL of a follower or of the leader, SIGSTOP of the leader, a network partition
through TCP proxies, a crash point inside a member, a power cut, a partition long enough to
need a snapshot, delayed and lost peer messages, a full disk), heals, and checks the recorded
history: per-key linearizability (``checker``), etcd's revision guarantees and the final
history (``revisions``), the lock and lease expiry (``locks``), watches, and that every member
converged.

Modules: ``history`` (the records), ``traffic`` (clients, watchers), ``faults`` and ``proxy``
(injection; the crash points and the power-loss file system are ``cluster/faults.py``),
``checker``, ``revisions`` and ``locks`` (the checks), ``harness`` (one run, the table).
``planted/`` plants a bug in the members to show the checks catch it; ``test_server_bugs``
reproduces server bugs found on the way.

``python -m tests.robustness [--runs N] [--seed S]``.
"""
