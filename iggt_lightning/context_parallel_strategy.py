"""``--trainer.strategy context_parallel``: Lightning's DDP processes, each scene's views split across them.

Lightning launches the processes as for ``ddp`` (``--trainer.devices N``, ``--trainer.num_nodes``; gloo on CPU,
NCCL on GPU). Unlike ``ddp``, every process gets **the same batches** (the sampler is not split over processes),
and the network runs with each scene's views split over the processes
(:mod:`iggt_lightning.context_parallel`: exact global attention over every process's keys and values). Each step
gets the whole scene's outputs on every process, so the losses, metrics and post-processing are the same on
every process; the metrics are therefore not synced across processes (that would count each scene N times).
A prediction writer writes on process 0 only.

Inference only: ``validate``, ``test`` and ``predict-dataset``; ``fit`` is refused (train with ``ddp`` or
``fsdp``). Every scene needs at least N views.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from lightning.pytorch.trainer.states import TrainerFn

from .context_parallel import model_splits_views

NAME = "context_parallel"


def _skip(*args: Any, **kwargs: Any) -> None:
    return None


def _fit_refused() -> ValueError:
    return ValueError(f"trainer.strategy: {NAME!r} splits each scene's views across processes for inference "
                      "(validate, test, predict-dataset), not for training; train with 'ddp' or "
                      "configs/strategies/fsdp.yaml")


def refuse_fit(strategy: Any) -> None:
    """``iggt fit``'s check before any process starts: the strategy (a name, a class_path spec or an instance) is
    not this one."""
    if isinstance(strategy, ContextParallelStrategy) or strategy == NAME:
        raise _fit_refused()
    spec = strategy.as_dict() if hasattr(strategy, "as_dict") else strategy
    if isinstance(spec, dict) and str(spec.get("class_path", "")).endswith("ContextParallelStrategy"):
        raise _fit_refused()


class ContextParallelStrategy(DDPStrategy):
    """DDP processes that split each scene's views instead of the batches (see the module doc)."""

    strategy_name = NAME

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        return {"num_replicas": 1, "rank": 0}     # every process reads every batch

    def setup(self, trainer) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            raise _fit_refused()
        super().setup(trainer)

    def _network(self):
        model = getattr(self.lightning_module, "model", None)
        if model is None or not hasattr(model, "backbone") or not hasattr(model, "heads"):
            raise ValueError(f"trainer.strategy: {NAME!r} needs a module whose .model is an IGGTModel; "
                             f"got {type(self.lightning_module).__name__}")
        return model

    def _unsynced_metrics(self) -> None:
        from torchmetrics import Metric

        for m in self.lightning_module.modules():
            if isinstance(m, Metric):         # every process holds the same scenes: reduce nothing
                m.sync_on_compute = False
                m._to_sync = False

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._unsynced_metrics()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._unsynced_metrics()

    def on_predict_start(self) -> None:
        super().on_predict_start()
        if self.global_rank != 0:            # the same scenes on every process: one writes them
            for cb in self.lightning_module.trainer.callbacks:
                if isinstance(cb, BasePredictionWriter):
                    cb.write_on_batch_end = _skip
                    cb.write_on_epoch_end = _skip

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        with model_splits_views(self._network()):
            return super().validation_step(*args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        with model_splits_views(self._network()):
            return super().test_step(*args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        with model_splits_views(self._network()):
            return super().predict_step(*args, **kwargs)

    @classmethod
    def register_strategies(cls, strategy_registry) -> None:
        if NAME not in strategy_registry:
            strategy_registry.register(NAME, cls, description="each scene's views split across DDP processes "
                                       "(exact global attention; inference only)")


ContextParallelStrategy.register_strategies(StrategyRegistry)
