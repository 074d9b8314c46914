"""pgrun's launchers (pgrun/batched_launcher.py, pgrun/launcher.py), where Hydra looks for
launchers: Hydra takes plugins from the hydra_plugins package only. The SLURM launcher needs
the `sweep` extra (submitit's launcher); the batched one does not."""

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

else:
    from hydra.plugins.launcher import Launcher

    class SlurmLauncher(Launcher):  # type: ignore[no-redef]
        """hydra/launcher=slurm without the sweep extra: one line that names the install."""

        def __init__(self, **params) -> None:
            from pgrun.config import UserError

            raise UserError(
                "hydra/launcher=slurm needs the sweep extra (submitit's launcher): "
                "pip install -e '.[sweep]' (or make install)"
            )

        def setup(self, **kwargs) -> None:  # never reached
            raise NotImplementedError

        def launch(self, job_overrides, initial_job_idx):  # never reached
            raise NotImplementedError


def register() -> None:
    """Make the classes of hydra/launcher=slurm and hydra/launcher=batched known to Hydra (pgrun's
    command calls it). Hydra finds plugins by walking the hydra_plugins package on disk, which
    misses an editable install's."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(SlurmLauncher)
    Plugins.instance().register(BatchedLauncher)
