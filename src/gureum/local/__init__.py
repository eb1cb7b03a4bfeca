"""Running gureum on this machine: `gureum up`, `down` and `status`.

Plain functions the CLI calls; they keep the run state (pids, ports, Ray address) under
GUREUM_HOME/run and the credentials `up` wrote under GUREUM_HOME.
"""
