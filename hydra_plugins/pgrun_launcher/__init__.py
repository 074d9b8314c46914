"""pgrun's launchers (pgrun/batched_launcher.py, pgrun/launcher.py), where Hydra looks for
launchers: Hydra takes plugins from the hydra_plugins package only. The SLURM launcher needs
the `sweep` extra (submitit's launcher); the batched one does not. Without the extra,
hydra/launcher=slurm's config does not compose, and pgrun's one line names the install
(pgrun.cli.one_line)."""

from pgrun import batched_launcher

try:
    from pgrun import launcher
except ImportError:  # without the sweep extra
    launcher = None


class BatchedLauncher(batched_launcher.BatchedLauncher):
    """hydra/launcher=batched: see pgrun/batched_launcher.py."""


if launcher is not None:

    class SlurmLauncher(launcher.SlurmLauncher):
        """hydra/launcher=slurm: see pgrun/launcher.py."""


def register() -> None:
    """Make the classes of hydra/launcher=batched and (with the sweep extra) slurm known to
    Hydra (pgrun's command calls it). Hydra finds plugins by walking the hydra_plugins package
    on disk, which misses an editable install's."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(BatchedLauncher)
    if launcher is not None:
        Plugins.instance().register(SlurmLauncher)
