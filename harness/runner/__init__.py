"""Running a sweep.

sweeper       the sweep as a whole (what the Hydra sweeper plugin runs): run folder, jobs, summary
sweep         expansion of the overrides into points, `auto`, validation
point         a point and what follows from its config alone
run_folder    results/<run_id>/: config, env, tables, locked atomic updates
group         one Hydra job: the points of one worker group, every outcome a row
worker_process / worker   the parent's and the child's side of a worker process
measure       the timing of one point, agreement; prompts: the synthetic prompts
reference     agreement references, computed once and cached
terminal      progress bar and summary table

The parent imports backend classes, never engine libraries; a worker never imports Hydra, so a backend may run under an
interpreter of its own (backend.python) that has only torch, numpy, pandas, pyarrow and this tree.
"""
