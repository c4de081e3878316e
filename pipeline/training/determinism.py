"""Per-epoch reseeding so that every epoch is a pure function of (seed, epoch, model/optimizer state).

Random crops and augmentations in MONAI transforms keep their own ``RandomState``; DataLoader shuffling and worker
seeds come from torch's global generator. :class:`EpochSeeder` reseeds all of them at ``Events.EPOCH_STARTED`` from
``seed + epoch``, so a run resumed from an end-of-epoch checkpoint draws exactly the same samples and augmentations
as an uninterrupted run (with any number of DataLoader workers).
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism

__all__ = ["EpochSeeder"]


class EpochSeeder:
    """Reseed Python/NumPy/torch and the dataset's random transforms with ``seed + epoch`` at each epoch start.

    Args:
        seed: base seed.
        rank: process rank under DDP (added so each rank draws differently).

    Examples:
        >>> from ignite.engine import Engine
        >>> engine = Engine(lambda e, b: None)
        >>> EpochSeeder(seed=1).attach(engine)
        >>> _ = engine.run([0], max_epochs=1)
    """

    def __init__(self, seed: int = 0, rank: int = 0) -> None:
        self.seed = int(seed)
        self.rank = int(rank)

    def epoch_seed(self, epoch: int) -> int:
        return (self.seed + 100_003 * self.rank + 1_009 * int(epoch)) % (2**32)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = self.epoch_seed(engine.state.epoch)
        set_determinism(seed=seed)
        loader = (
            engine.state.dataloader if engine.state.dataloader is not None else getattr(engine, "data_loader", None)
        )
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            set_rnd(dataset, seed)
