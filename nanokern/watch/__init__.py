"""`nanokern watch`: a sidecar beside a Nanotron training run that exports every complete step of
its checkpoints folder to a HF folder, checks it, and tells others.

loop.py (the driver: rank 0 decides, every rank exports), schedule.py (which step is ready:
complete on disk and unchanged since the last look), export.py (one step through convert's own
plan and execute), events.py (the jsonl event log and what it says was done), outputs.py (the
watch's lock, the `latest` link, removing its own old exports), hooks.py (--check parity,
--exec), status.py (--status: the table and the plot), cli.py (the click command).
"""
