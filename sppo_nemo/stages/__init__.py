"""One module per stage of an iteration (paper, Algorithm 1): generate → annotate → build →
train → evaluate. Each exposes ``fingerprint(ctx, t)`` (what it depends on) and
``run(ctx, t, workdir)`` (do the work inside the stage's partial folder)."""

STAGES = ("generate", "annotate", "build", "train", "evaluate")
