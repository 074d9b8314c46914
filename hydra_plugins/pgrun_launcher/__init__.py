"""pgrun's SLURM launcher (pgrun/launcher.py), where Hydra looks for launchers: Hydra takes
plugins from the hydra_plugins package only."""

from pgrun import batched_launcher, launcher


class SlurmLauncher(launcher.SlurmLauncher):
    """hydra/launcher=slurm: see pgrun/launcher.py."""


class BatchedLauncher(batched_launcher.BatchedLauncher):
    """hydra/launcher=batched: see pgrun/batched_launcher.py."""
