"""Experiments that answer the classic questions of BYOL and SimCLR with one command each: what SimCLR's
temperature does (:mod:`.temperature`) and why BYOL needs no negatives (:mod:`.byol_ablation`). Each writes
a Markdown report with PNG figures and a results.json."""
