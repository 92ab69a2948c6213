"""The run directory: its layout and files (run_dir.py), the one reader of a saved checkpoint step
(checkpoint_read.py) with its checksums, the names a run logs its curves under, and the named
moments at which tests interrupt a run."""
