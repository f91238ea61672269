"""The fault suite: `llmservice serve` in processes of its own, broken on purpose (Redis
killed, the process SIGKILLed, a provider that never answers, clients that read slowly)
and soaked. What each test asserts is in its module's docstring; docs/operations.md
("Fault suite") has the figures of a run and how to rerun it."""

from __future__ import annotations

# One decode thread in every service these tests start. With one per core (the default) on
# a 2-core machine, llama.cpp's decode slowed ~100x whenever another process kept a core
# busy (60 tokens: 126 s instead of 0.8 s; the process got one core, its two threads wait
# on each other); with one thread it stays near its speed. The tests are about faults, not
# decode speed, and CI machines are shared.
ONE_THREAD = "llamacpp.n_threads=1"
