"""Controllers: reconciliation loops that make the cluster match the database (jobs on Ray,
endpoints on Ray Serve), all on one loop base (``loop.ControlLoop``). One server per database
runs them."""
