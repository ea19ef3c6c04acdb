"""The chaos run (`saga chaos`, `make chaos`): orders and cancels placed while workers
crash, brokers restart or are killed and bad or duplicate records arrive; then every
invariant is checked from the changelogs.

  plan.py        what a run does, decided up front from a seed (pure)
  run.py         executes the plan: setup, chaos, settle, stop, check
  workers.py     what is done to the worker processes (kills, stops, restarts, scaling)
  brokers.py     node kills on three brokers (--brokers 3), and the stalls they caused
  kafka_io.py    reading topics, tables from changelogs, lag, the live terminal watch
  invariants.py  checks of the final state against the plan (pure)
  view_watch.py  key lookups on the web views while partitions move (--watch-views)
  report.py      the table a run prints
"""
